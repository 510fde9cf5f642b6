"""What happens to a part at its ejector slot, and what the line is told when the inspector
fails. Pure policy: no I/O, no threads."""

from .base import ACCEPT, FAILSAFE, REJECT


class FailSafe:
    """on_late:  reject (default) | ignore      - a part whose verdict has not come by its slot
    on_fault: reject_all (default) | stop_line | fault_only
        reject_all: every part without a verdict is rejected whatever on_late says, and the
                    reject_all bit stays up while faulted (the PLC diverts what the box can't see)
        stop_line:  the stop-line output goes up while faulted
        fault_only: only the fault bit; parts follow on_late"""

    def __init__(self, cfg):
        self.on_late = cfg["on_late"]
        self.on_fault = cfg["on_fault"]

    def at_slot(self, decision, fault_kind):
        """-> (reject, code, event kind or None, reason) for a part reaching the ejector."""
        if decision is not None:
            return decision.reject, (REJECT if decision.reject else ACCEPT), None, decision.reason
        if fault_kind and self.on_fault == "reject_all":
            return True, FAILSAFE, "failsafe_reject", f"failsafe:{fault_kind}"
        if self.on_late == "reject":
            why = f"failsafe:{fault_kind}" if fault_kind else "failsafe:no_verdict"
            return True, FAILSAFE, "failsafe_reject", why
        return False, None, "missed", "no_verdict"

    def status(self, ready, fault_kind):
        faulted = fault_kind is not None
        return {
            "ready": bool(ready and not faulted),
            "fault": faulted,
            "fault_kind": fault_kind,
            "stop_line": faulted and self.on_fault == "stop_line",
            "reject_all": faulted and self.on_fault == "reject_all",
        }
