"""Python under an emulated CPU, to run ONNX Runtime's other integer kernel families on this host.

  * x86-64 AVX2 without VNNI: `qemu-x86_64 -cpu Haswell` (Debian's qemu-user) runs this venv's own
    Python; cpuid then reports Haswell, so numpy and ONNX Runtime's MLAS pick their AVX2 kernels
    (u8s8 pair sums in 16 bits, VPMADDUBSW). QEMU 7.2's TCG implements AVX2 but no AVX-512 at
    all: AVX-512 without VNNI cannot be emulated, and `-cpu Skylake-Server` is AVX2 in effect.
  * aarch64 with and without the dot product (SDOT/UDOT): `qemu-aarch64 -L SYSROOT -cpu
    neoverse-n1` / `-cpu cortex-a57`, on a sysroot of Debian 12's arm64 python3.11 and its
    libraries (apt-get download, dpkg -x) plus the aarch64 wheels of the numpy and onnxruntime
    versions of this venv (pip download), ~170 MB in ~/.cache/lineside/arm64 (--build-arm64).
    qemu-user 7.2 passes the host's x86 /proc/cpuinfo through, and ONNX Runtime (its cpuinfo
    library) dies of SIGSEGV on it; qemu's -L prefix also redirects that path, so an Arm
    /proc/cpuinfo is written into the sysroot for each -cpu: its Features line is the emulated
    CPU's own HWCAP (read from /proc/self/auxv inside the emulation), its MIDR the model's.
    ONNX Runtime takes the features it dispatches on from HWCAP, not from that file.

    python -m scripts.emulation [--install-qemu] [--build-arm64]   # then prints what runs
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSROOT = os.environ.get("LINESIDE_ARM64_SYSROOT") or os.path.expanduser("~/.cache/lineside/arm64")
ARM_PYTHON = "usr/bin/python3.11"      # Debian 12's; the wheels below are cp311
DEBS = ("libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5 libuuid1 libssl3 libcrypt1 "
        "python3.11-minimal libpython3.11-minimal libpython3.11-stdlib").split()
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                   "manylinux2014_aarch64")
# MIDR fields (implementer, variant, part, revision) of the models qemu emulates, from Arm's manuals
ARM_CPUS = {"neoverse-n1": (0x41, 0x4, 0xd0c, 0x1), "cortex-a57": (0x41, 0x1, 0xd07, 0x0)}
# arch/arm64/include/uapi/asm/hwcap.h: AT_HWCAP bits 0..31, AT_HWCAP2 bits 0..
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
         "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
          "svebf16 i8mm bf16 dgh rng bti").split()


@dataclass
class Runner:
    """A Python to start the child with: argv prefix, environment, and how it runs, in words."""
    name: str
    python: list
    how: str
    env: dict = field(default=None)
    prepare: object = None           # called before each run (the Arm /proc/cpuinfo)

    def run(self, args, timeout=3600, **kw):
        if self.prepare:
            self.prepare()
        return subprocess.run(self.python + list(args), env=self.env, timeout=timeout, **kw)


def qemu_version(arch):
    exe = shutil.which(f"qemu-{arch}")
    if not exe:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return out.split("version")[-1].split()[0] if "version" in out else "?"


def install_qemu():
    """apt-get install qemu-user (as root, or through sudo -n); True if qemu-x86_64 is there after."""
    if not shutil.which("qemu-x86_64"):
        pre = [] if os.geteuid() == 0 else ["sudo", "-n"]
        subprocess.run(pre + ["apt-get", "install", "-y", "-q", "--no-install-recommends", "qemu-user"],
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, check=False)
    return bool(shutil.which("qemu-x86_64"))


def native():
    return Runner("native", [sys.executable], f"natively (Python {sys.version.split()[0]})")


def x86(cpu="Haswell"):
    if not shutil.which("qemu-x86_64"):
        return None
    return Runner(f"qemu-x86_64 {cpu}", ["qemu-x86_64", "-cpu", cpu, sys.executable],
                  f"qemu-x86_64 {qemu_version('x86_64')} -cpu {cpu}, this venv's Python")


def _arm_env(root):
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.path.join(root, "site-packages"), "LC_ALL": "C.UTF-8"}


def write_arm_cpuinfo(root, cpu):
    """SYSROOT/proc/cpuinfo as Linux writes it on arm64, for the emulated `cpu`: the Features come
    from the HWCAP that qemu gives the emulated process (its /proc/self/auxv)."""
    code = ("import struct; d = open('/proc/self/auxv', 'rb').read(); "
            "a = dict(struct.iter_unpack('<QQ', d)); print(a.get(16, 0), a.get(26, 0))")
    out = subprocess.run(["qemu-aarch64", "-L", root, "-cpu", cpu, os.path.join(root, ARM_PYTHON), "-c", code],
                         env=_arm_env(root), capture_output=True, text=True, check=True).stdout.split()
    hw, hw2 = int(out[0]), int(out[1])
    feats = [n for i, n in enumerate(HWCAP) if hw >> i & 1] + [n for i, n in enumerate(HWCAP2) if hw2 >> i & 1]
    imp, var, part, rev = ARM_CPUS[cpu]
    block = (f"BogoMIPS\t: 50.00\nFeatures\t: {' '.join(feats)}\nCPU implementer\t: 0x{imp:02x}\n"
             f"CPU architecture: 8\nCPU variant\t: 0x{var:x}\nCPU part\t: 0x{part:03x}\nCPU revision\t: {rev}\n\n")
    os.makedirs(os.path.join(root, "proc"), exist_ok=True)
    with open(os.path.join(root, "proc", "cpuinfo"), "w") as f:     # as many CPUs as the host's sysfs lists
        f.write("".join(f"processor\t: {i}\n{block}" for i in range(os.cpu_count() or 1)))
    return feats


def arm64(cpu, root=SYSROOT):
    if not (shutil.which("qemu-aarch64") and os.path.isfile(os.path.join(root, ".built"))):
        return None
    return Runner(f"qemu-aarch64 {cpu}", ["qemu-aarch64", "-L", root, "-cpu", cpu, os.path.join(root, ARM_PYTHON)],
                  f"qemu-aarch64 {qemu_version('aarch64')} -cpu {cpu}, Debian 12 arm64 Python 3.11 sysroot",
                  _arm_env(root), prepare=lambda: write_arm_cpuinfo(root, cpu))


def build_arm64(root=SYSROOT, log=print):
    """The aarch64 sysroot: Debian packages through apt-get with a private state folder (the host's
    apt configuration is left alone), wheels of this venv's numpy and onnxruntime versions."""
    from importlib.metadata import version

    cache = root + ".cache"
    apt = ["apt-get", "-q", "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
           "-o", f"Dir::State::Lists={cache}/lists", "-o", f"Dir::State::status={cache}/status",
           "-o", f"Dir::Cache={cache}/apt"]
    for d in ("lists/partial", "apt/archives/partial", "debs", "wheels"):
        os.makedirs(os.path.join(cache, d), exist_ok=True)
    open(os.path.join(cache, "status"), "a").close()
    log("arm64 sysroot: apt-get update (arm64 lists, private state)")
    subprocess.run(apt + ["update"], check=True, stdout=subprocess.DEVNULL)
    log(f"arm64 sysroot: apt-get download {len(DEBS)} packages")
    subprocess.run(apt + ["download"] + [f"{p}:arm64" for p in DEBS], cwd=os.path.join(cache, "debs"), check=True,
                   stdout=subprocess.DEVNULL)
    pins = [f"numpy=={version('numpy')}", f"onnxruntime=={version('onnxruntime')}"]
    log(f"arm64 sysroot: pip download {' '.join(pins)} (aarch64, cp311)")
    plat = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.11", "--implementation", "cp", *plat, "-d", os.path.join(cache, "wheels"),
                    *pins], check=True)
    shutil.rmtree(root, ignore_errors=True)
    for deb in sorted(os.listdir(os.path.join(cache, "debs"))):
        subprocess.run(["dpkg", "-x", os.path.join(cache, "debs", deb), root], check=True)
    for whl in sorted(os.listdir(os.path.join(cache, "wheels"))):
        with zipfile.ZipFile(os.path.join(cache, "wheels", whl)) as z:
            z.extractall(os.path.join(root, "site-packages"))
    for dirpath, _dirs, files in os.walk(os.path.join(root, "site-packages")):   # zip drops the x bits
        for f in files:
            if ".so" in f:
                os.chmod(os.path.join(dirpath, f), 0o755)
    with open(os.path.join(root, ".built"), "w") as f:
        json.dump({"debs": sorted(os.listdir(os.path.join(cache, "debs"))), "wheels": pins}, f)
    return root


def probe(runner):
    """The kernel family a runner's Python sees with onnxruntime imported, or None if it fails."""
    code = (f"import sys; sys.path.insert(0, {REPO!r}); import onnxruntime; from convert.cpu import cpu_kernels; "
            "print(cpu_kernels() + ', onnxruntime ' + onnxruntime.__version__)")
    try:
        res = runner.run(["-c", code], timeout=600, capture_output=True, text=True)
    except Exception as exc:                                   # noqa: BLE001 (reported, not raised)
        return None, str(exc)
    if res.returncode != 0:
        return None, f"exit {res.returncode}: {res.stderr.strip()[-300:]}"
    return res.stdout.strip(), ""


def runners(arm=True):
    """Every Python this host can run the child in: native first, then the emulations available."""
    out = [native(), x86("Haswell")]
    if arm:
        out += [arm64(cpu) for cpu in ARM_CPUS]
    return [r for r in out if r is not None]


def print_probes(arm=True):
    """One line per runner: the kernel family its Python sees, or why it fails."""
    for r in runners(arm):
        kernels, why = probe(r)
        print(f"{r.name:26} {r.how}: {kernels or 'FAILS ' + why}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--install-qemu", action="store_true", help="apt-get install qemu-user if absent")
    p.add_argument("--build-arm64", action="store_true", help=f"build the aarch64 sysroot in {SYSROOT}")
    args = p.parse_args(argv)
    if args.install_qemu and not install_qemu():
        print("qemu-user could not be installed (not root, no sudo?)")
    if args.build_arm64:
        build_arm64()
    print_probes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
