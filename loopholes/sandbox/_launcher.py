"""Sandbox launcher: sets up the isolation, then starts the worker inside it.

Runs as a script in a fresh interpreter (``python -I -S -B _launcher.py CONFIG``)
started by the pool. It uses ctypes for unshare(2), mount(2) and prctl(2),
so it never runs untrusted code itself: the worker it starts is a new
interpreter (execve), whose memory contains no ctypes.

Where the process is root and the kernel allows it, the worker runs as
process 1 of new PID, network, mount, IPC and UTS namespaces, in a chroot made
of read-only bind mounts of the Python installation and the system libraries,
on a size-limited tmpfs. Elsewhere it runs in the basic mode: a temporary
scratch directory on the host, the audit hook as the file and network barrier,
and a child subreaper for process cleanup. This process stays as the worker's
parent and kills whatever is left when the worker ends or on SIGTERM.
"""

import ctypes
import json
import os
import shutil
import signal
import sys
import sysconfig
import tempfile

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

SYSTEM_LIBRARY_DIRS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib")
DEVICE_FILES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full")
NEW_ROOT = "/tmp/root"

libc = ctypes.CDLL(None, use_errno=True)


def check(result, what):
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what} failed: {os.strerror(error)}")


def prctl(option, value):
    check(libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


def mount(source, target, fstype, flags, data=None):
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    check(libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)),
          f"mount {source} on {target}")


def stdlib_dirs():
    paths = sysconfig.get_paths()
    return sorted({os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib")})


def read_only_dirs():
    """Return the host folders the chroot shows: the Python installation and system libraries."""
    wanted = set(stdlib_dirs())
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        wanted.add(os.path.realpath(libdir))
    for path in SYSTEM_LIBRARY_DIRS:
        if os.path.isdir(path):
            wanted.add(os.path.realpath(path))
    # A folder inside another bound folder comes with it.
    chosen = []
    for path in sorted(wanted, key=len):
        if not any(path == parent or path.startswith(parent + "/") for parent in chosen):
            chosen.append(path)
    return chosen


def bind_read_only(source, target, is_device=False):
    if os.path.isdir(source):
        os.makedirs(target, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        with open(target, "w"):
            pass
    mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | (0 if is_device else MS_NODEV)
    mount(None, target, None, flags)


def build_root(config, python, zygote_source):
    """Build the worker's root folder on a fresh tmpfs and return the zygote's path in it."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    size = f"size={config['scratch_mb']}m,nr_inodes={config['scratch_inodes']},mode=755"
    # This tmpfs covers /tmp only inside the new mount namespace; the host's /tmp is untouched.
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, size)
    os.mkdir(NEW_ROOT, 0o755)

    for path in read_only_dirs():
        bind_read_only(path, NEW_ROOT + path)
    for path in SYSTEM_LIBRARY_DIRS:
        # Merged-/usr systems have /lib -> usr/lib; keep those links so the loader finds itself.
        if os.path.islink(path) and not os.path.lexists(NEW_ROOT + path):
            os.symlink(os.readlink(path), NEW_ROOT + path)
    bind_read_only(python, NEW_ROOT + python)
    if os.path.isfile("/etc/ld.so.cache"):
        bind_read_only("/etc/ld.so.cache", NEW_ROOT + "/etc/ld.so.cache")
    for device in DEVICE_FILES:
        if os.path.exists(device):
            bind_read_only(device, NEW_ROOT + device, is_device=True)

    os.mkdir(NEW_ROOT + "/scratch", 0o711)
    with open(NEW_ROOT + "/zygote.py", "w") as handle:
        handle.write(zygote_source)
    os.chmod(NEW_ROOT + "/zygote.py", 0o644)
    return "/zygote.py"


def try_namespaces(config, python, zygote_source):
    """Enter new namespaces and build the chroot; return (zygote path, layers) or raise OSError."""
    if os.geteuid() != 0:
        raise OSError("namespaces need root (or CAP_SYS_ADMIN); running as uid %d" % os.geteuid())
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID), "unshare")
    zygote = build_root(config, python, zygote_source)
    layers = {
        "network": "empty network namespace (loopback down)",
        "filesystem": "chroot of read-only bind mounts on a tmpfs of %d MiB" % config["scratch_mb"],
        "processes": "PID namespace; the worker is its process 1 and kills all others after each test",
        "user": "each test runs as uid %d with no capabilities" % config["uid"],
        "ipc": "IPC and UTS namespaces",
    }
    return zygote, layers


def try_network_only():
    """Without root, an unprivileged user namespace may still give an empty network namespace."""
    try:
        check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER | CLONE_NEWNET)")
    except OSError as error:
        return f"audit hook only (no network namespace: {error.strerror})"
    return "empty network namespace in an unprivileged user namespace"


def report_failure(message):
    hello = {"ready": False, "error": message}
    os.write(1, (json.dumps(hello) + "\n").encode())
    sys.exit(1)


def main():
    config = json.loads(sys.argv[1])
    parent = os.getppid()
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(1)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_CHILD_SUBREAPER, 1)

    python = os.path.realpath(config["python"])
    with open(config["zygote"]) as handle:
        zygote_source = handle.read()
    notes = []
    zygote_config = {"uid": config["uid"], "read_prefixes": stdlib_dirs(), "pid_namespace": False}

    mode = config["isolation"]
    if mode in ("auto", "namespaces"):
        try:
            zygote, layers = try_namespaces(config, python, zygote_source)
            zygote_config.update(pid_namespace=True, scratch_root="/scratch")
            mode = "namespaces"
        except OSError as error:
            if mode == "namespaces":
                report_failure(f"isolation 'namespaces' is unavailable: {error}")
            notes.append(f"namespaces unavailable ({error}); using the basic isolation")
            mode = "basic"
    if mode == "basic":
        zygote = config["zygote"]
        scratch_root = tempfile.mkdtemp(prefix="loopholes-sandbox-")
        os.chmod(scratch_root, 0o711)
        zygote_config["scratch_root"] = scratch_root
        network = try_network_only() if os.geteuid() != 0 and config["isolation"] == "auto" else \
            "audit hook only (no network namespace)"
        user = ("each test runs as uid %d" % config["uid"]) if config["uid"] is not None else \
            "tests run as the calling user (not root, so no other uid is available)"
        layers = {
            "network": network,
            "filesystem": "audit hook: reads only in the Python library folders, writes only in a "
                          "per-test scratch folder",
            "processes": "audit hook blocks process creation; child subreaper and /proc walk kill leftovers",
            "user": user,
        }
    zygote_config["isolation"] = {"mode": mode, "layers": layers, "notes": notes}

    child = os.fork()
    if child == 0:
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if mode == "namespaces":
                os.chroot(NEW_ROOT)
                os.chdir("/")
            environment = {"PYTHONHASHSEED": "0", "MALLOC_ARENA_MAX": "2", "LANG": "C.UTF-8"}
            os.execve(python, [python, "-I", "-S", "-B", zygote, json.dumps(zygote_config)], environment)
        except OSError as error:
            report_failure(f"cannot start the sandbox worker {python}: {error}")
        finally:
            os._exit(127)

    keep(child, mode, zygote_config.get("scratch_root"))


def keep(child, mode, scratch_root):
    """Wait for the worker; on its exit or on SIGTERM, kill what it left and clean up."""
    def stop(signum, frame):
        kill_quietly(child)

    signal.signal(signal.SIGTERM, stop)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    status = 0
    while True:
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child:
            status = os.waitstatus_to_exitcode(wait_status)
            # In the basic mode the worker's orphans are now this process's children.
            for _ in range(50):
                for orphan in children_of(os.getpid()):
                    kill_quietly(orphan)
                try:
                    while os.waitpid(-1, 0)[0] > 0:
                        pass
                except ChildProcessError:
                    pass
                if not children_of(os.getpid()):
                    break
            break
    if mode == "basic" and scratch_root:
        shutil.rmtree(scratch_root, ignore_errors=True)
    sys.exit(max(status, 0))


def children_of(parent):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


def kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main()
