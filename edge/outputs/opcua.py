"""OPC UA (asyncua's sync client): the Modbus map's information as variables on the PLC's
OPC UA server, each node id = node_prefix + name (names in docs/line-io.md). The variables'
data types are read once per connection and every write uses them."""

import threading

from ..common.errors import EdgeError
from .base import FAULT_CODES, QueuedOutput

NODES = ("Ready", "Fault", "FaultCode", "StopLine", "RejectAll", "Reject", "Heartbeat",
         "LastSeq", "LastPartId", "LastEncoder", "LastVerdict", "LastScore", "VerdictCount",
         "RejectCount")


class OpcuaOutput(QueuedOutput):
    kind = "OPC UA server"
    gap_kind = "plc_gap"

    def __init__(self, cfg, where, emit, reconnect):
        super().__init__(cfg, where, emit, reconnect)
        self.address = cfg["endpoint"]
        self._lock = threading.Lock()
        self.values = {"Ready": False, "Fault": False, "FaultCode": 0, "StopLine": False,
                       "RejectAll": False, "Reject": False, "Heartbeat": 0, "LastSeq": 0,
                       "LastPartId": "", "LastEncoder": 0, "LastVerdict": 0, "LastScore": 0.0,
                       "VerdictCount": 0, "RejectCount": 0}
        self._client = None

    def _connect(self):
        try:
            from asyncua import ua
            from asyncua.sync import Client
        except ImportError as e:
            raise EdgeError(f"OPC UA needs asyncua: {e}", self.where) from None
        self._ua = ua
        cl = Client(self.cfg["endpoint"], timeout=self.cfg["timeout_ms"] / 1000)
        try:
            cl.connect()
        except BaseException:
            cl.tloop.stop()
            raise
        self._client = cl
        self.nodes, self.types = {}, {}
        for name in NODES:
            nid = self.cfg["node_prefix"] + name
            try:
                node = cl.get_node(nid)
                self.types[name] = node.read_data_type_as_variant_type()
            except Exception as e:
                self._disconnect()
                raise EdgeError(f"the OPC UA server at {self.address} has no usable variable {nid}"
                                f" ({type(e).__name__}: {e})", f"{self.where}.node_prefix") from None
            self.nodes[name] = node

    def _disconnect(self):
        if self._client is not None:
            cl, self._client = self._client, None
            try:
                cl.disconnect()
            except Exception:
                cl.tloop.stop()

    def _convert(self, name, v):
        vt = self.types[name]
        if vt == self._ua.VariantType.Boolean:
            v = bool(v)
        elif vt in (self._ua.VariantType.Float, self._ua.VariantType.Double):
            v = float(v)
        elif vt == self._ua.VariantType.String:
            v = "" if v is None else str(v)
        else:
            v = int(v or 0)
        return self._ua.DataValue(self._ua.Variant(v, vt))

    def _do(self, op, names):
        with self._lock:
            vals = [self._convert(n, self.values[n]) for n in names]
        self._client.write_values([self.nodes[n] for n in names], vals)

    def _resync(self):
        self._do("write", NODES)

    def _set(self, **kv):
        with self._lock:
            self.values.update(kv)
        self.submit("write", tuple(kv))

    def pulse(self, on, seq):
        self._set(Reject=bool(on))

    def heartbeat(self, n):
        self._set(Heartbeat=n)

    def verdict(self, v):
        with self._lock:
            count = self.values["VerdictCount"] + 1
            rcount = self.values["RejectCount"] + (1 if v["reject"] else 0)
        self._set(LastSeq=v["seq"], LastPartId="" if v["part_id"] is None else str(v["part_id"]),
                  LastEncoder=v["encoder"] or 0, LastVerdict=v["code"], LastScore=v["score"] or 0.0,
                  RejectCount=rcount, VerdictCount=count)

    def status(self, s):
        self._set(Ready=s["ready"], Fault=s["fault"], FaultCode=FAULT_CODES.get(s["fault_kind"], 9),
                  StopLine=s["stop_line"], RejectAll=s["reject_all"])
