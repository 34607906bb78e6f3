"""Shared helpers of scripts/bench-native and scripts/bench-offload.

Most of this is copied from scripts/bench-archive (which stays
self-contained): mount bookkeeping, timed commands in their own process
group, the cache discipline (sync; drop_caches; pre-read the backing data),
formatting, and the same fsd daemon control (stop only the fsd whose command
line names our own state directory). New here: random inputs that never
repeat (a per-run stamp in every MiB, because fsd deduplicates identical
1 MiB chunks), a warm-up run that is not counted, and a small fsd client.
"""

import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
HELPERS = Path(__file__).resolve().parent

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
STAMP = 32          # bytes overwritten at the start of every MiB per run


def release_dir():
    """Builds the release binaries (a no-op when they are current, so the
    numbers are always those of the checked-out code) and returns where cargo
    put them: target/<host triple>/release, because .cargo/config.toml names
    the target to link fsd statically."""
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    host = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("host:"))
    return REPO / "target" / host / "release"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Timeout(Exception):
    """A mount or a measured command did not finish within --timeout."""


class Failed(Exception):
    """A command failed outright (exit status, missing output); the row says why."""


# ---------------------------------------------------------------- mounts

def _unescape_mountinfo(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and i + 4 <= len(field):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounted_paths():
    with open("/proc/self/mountinfo") as f:
        return {_unescape_mountinfo(line.split()[4]) for line in f}


def is_mounted(path):
    return str(path) in mounted_paths()


def force_unmount(path, wait=10.0):
    """Unmount whatever is at path: fusermount3 -u first (clean), then a lazy
    umount so a peer stuck in a request can never leave the mount behind."""
    path = str(path)
    if not is_mounted(path):
        return
    subprocess.run(["fusermount3", "-u", "-q", path], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    if is_mounted(path):
        subprocess.run(["umount", "-l", path], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + wait
    while is_mounted(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    if is_mounted(path):
        log(f"warning: {path} is still mounted")


def unmount_leftovers(mnt_dir):
    """Mounts an interrupted earlier run left, only under our own mnt dir."""
    for m in sorted(mounted_paths()):
        if m.startswith(str(mnt_dir) + "/"):
            log(f"unmounting leftover {m}")
            force_unmount(m)


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            # A zombie has exited; only its parent's wait is missing.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def pid_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- commands

def run(argv, timeout, **kw):
    """Run a short control command (fsd, tokenctl); Timeout or Failed on trouble."""
    try:
        p = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                           timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise Timeout(f"{Path(str(argv[0])).name} did not finish in {timeout:g} s")
    if p.returncode != 0:
        raise Failed(f"{' '.join(map(str, argv[:4]))}…: exit {p.returncode}: "
                     f"{(p.stderr or p.stdout).strip()[-300:]}")
    return p.stdout


def run_timed(argv, timeout, capture=False):
    """Time one measured command in its own process group, so that on timeout
    the whole pipeline (bash -c 'cat A > B') is killed, not just the shell.
    Returns (seconds or None on timeout, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None, None
    except BaseException:
        # Interrupted: its own session does not get our Ctrl-C, and it must
        # not keep a file open on a mount we are about to remove.
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise Failed(f"{Path(str(argv[0])).name}: exit {p.returncode}: "
                     f"{err.decode(errors='replace').strip()[-300:]}")
    return dt, (out.decode() if capture else None)


def run_limited(argv, timeout, capture=True):
    """An untimed preparation step under a limit: Timeout instead of a hang."""
    dt, out = run_timed(argv, timeout, capture)
    if dt is None:
        raise Timeout(f"{Path(str(argv[0])).name} did not finish in {timeout:g} s")
    return out


def tail(path, n=300):
    try:
        return Path(path).read_text(errors="replace").strip()[-n:]
    except OSError:
        return ""


def tool_version(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (p.stdout + "\n" + p.stderr).strip().splitlines()
    name = Path(argv[0]).name.lower()
    return next((l.strip() for l in lines if name in l.lower()), lines[0] if lines else "?")


REMOVE_LIMIT = 600.0


def remove(path, timeout=REMOVE_LIMIT):
    """rm -rf PATH in a child process under a limit: a path inside a FUSE
    mount must not hang the benchmark if the daemon stops answering."""
    try:
        p = subprocess.run(["rm", "-rf", "--", str(path)], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed(f"rm -rf {path} did not finish in {timeout:g} s")
    if p.returncode != 0:
        raise Failed(f"rm -rf {path}: {p.stderr.strip()[-300:]}")


def sync(timeout=600.0):
    """sync(1) under a limit (it also syncs every FUSE mount on the host)."""
    try:
        subprocess.run(["sync"], timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed(f"sync did not finish in {timeout:g} s")


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fio_json(out):
    # fio may print warnings before the JSON document.
    return json.loads(out[out.index("{"):])


# ---------------------------------------------------------------- cache discipline

class Cache:
    """Every timed run starts from the same state: sync; drop_caches (which
    also drops every FUSE mount's dentries, attributes and pages); then the
    backing data is read once so it sits in the page cache, and the tools
    are run once so their binaries do too. What is timed is the filesystem
    path, not the disk, nor exec from disk."""

    def __init__(self, notes):
        self.notes = notes
        self.can_drop = True

    SYNC_LIMIT = 600.0

    def drop(self):
        sync(self.SYNC_LIMIT)
        if not self.can_drop:
            return
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError as e:
            self.can_drop = False
            self.notes.append(f"could not drop caches ({e}); runs are not cache-comparable")
            log(f"warning: {self.notes[-1]}")

    @staticmethod
    def prewarm(paths):
        buf = bytearray(MiB)
        for p in paths:
            p = Path(p)
            if p.is_dir():
                subprocess.run(["ls", "-lR", str(p)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=600)
                continue
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                while os.readv(fd, [buf]):
                    pass
            finally:
                os.close(fd)

    @staticmethod
    def warm_tools(tools):
        for t in tools:
            subprocess.run([str(t), "--version"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)

    def prepare(self, paths=(), tools=()):
        self.drop()
        self.prewarm(paths)
        self.warm_tools(tools)


# ---------------------------------------------------------------- inputs that never repeat

def ensure_random_file(path, size):
    """A file of `size` random bytes, generated once and reused by later
    invocations (its marker records the size, so a half-written file from an
    interrupted generation is never reused)."""
    path = Path(path)
    marker = path.with_name(path.name + ".complete")
    if path.exists() and marker.exists() and json.loads(marker.read_text()) == {"size": size}:
        log(f"inputs: reusing {path}")
        return path
    log(f"inputs: generating {path} ({fmt_bytes(size)} random) …")
    marker.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, MiB)
            f.write(os.urandom(n))
            left -= n
    marker.write_text(json.dumps({"size": size}))
    return path


def stamp_bytes(tag, i):
    return hashlib.sha256(f"{tag}/{i}".encode()).digest()[:STAMP]


def stamp_in_place(path, size, tag, offset=0):
    """Overwrite the first STAMP bytes of every MiB of [offset, offset+size)
    with a value unique to (tag, MiB index), so no 1 MiB chunk of this run
    equals one of any earlier run (fsd would deduplicate it otherwise)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range((size + MiB - 1) // MiB):
            os.pwrite(fd, stamp_bytes(tag, i), offset + i * MiB)
    finally:
        os.close(fd)


def chunk_hashes(path, size, offset=0):
    """SHA-256 of every 1 MiB of [offset, offset+size): the names fsd gives
    the chunks of a file with this content (STATE/chunks/ab/<hash>)."""
    out = []
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left > 0:
            b = f.read(min(MiB, left))
            if not b:
                break
            out.append(hashlib.sha256(b).hexdigest())
            left -= len(b)
    return out


def new_nonce():
    return os.urandom(8).hex()


# ---------------------------------------------------------------- formatting

# kind → better. "time" is seconds, "rate" bytes/s, "iops" ops/s.
BETTER = {"time": "lower", "rate": "higher", "iops": "higher"}


def fmt_bytes(n):
    neg = n < 0
    n = abs(n)
    s = f"{n} B"
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            v = n / size
            s = f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
            break
    return ("-" if neg else "") + s


def fmt_value(kind, v):
    if kind == "time":
        if v < 1:
            return f"{v * 1000:.3g} ms"
        return f"{v:.3g} s" if v < 100 else f"{v:.0f} s"
    if kind == "rate":
        if v >= GiB:
            return f"{v / GiB:.2f} GiB/s"
        mib = v / MiB
        return f"{mib:.0f} MiB/s" if mib >= 100 else f"{mib:.3g} MiB/s"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def fmt_result(r):
    if r is None:
        return "-"
    if r.get("value") is None:
        return r.get("error") or r.get("note") or "-"
    bound = {">": "> ", "<": "< "}.get(r.get("bound"), "")
    return bound + fmt_value(r["kind"], r["value"])


def ratio(a_r, b_r):
    """a/b with bounds carried through: b timed out at '> 120 s' turns a/b
    into '< x', and so on. Returns (value, bound) or None."""
    if not a_r or not b_r or a_r.get("value") is None or b_r.get("value") is None:
        return None
    if b_r["value"] == 0:
        return None
    inv = {">": "<", "<": ">", None: None}
    b1, b2 = a_r.get("bound"), inv[b_r.get("bound")]
    if b1 and b2 and b1 != b2:
        return ("?", None)
    return (a_r["value"] / b_r["value"], b1 or b2)


def fmt_ratio(rt):
    if rt is None:
        return "n/a"
    v, b = rt
    if v == "?":
        return "?"
    return ({">": "> ", "<": "< "}.get(b, "")) + (f"{v:.3g}×")


def wrap_prose(text, width=100):
    """Wrap the report's prose lines (tables, whose columns are separated by
    two spaces, are left alone)."""
    out = []
    for line in text.split("\n"):
        if len(line) <= width or "  " in line.strip():
            out.append(line)
        else:
            out.append(textwrap.fill(line, width, subsequent_indent="  ",
                                     break_on_hyphens=False))
    return "\n".join(out)


def table(rows, headers):
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


# ---------------------------------------------------------------- fsd

class FsdDaemon:
    """One fsd serving one private state directory (`fsd mount --daemon`
    returns once mounted). The state lives in the work dir, on the same
    filesystem as the plain directory the peers use."""

    def __init__(self, fsd, tokenctl, state, mnt):
        self.fsd, self.tokenctl = Path(fsd), Path(tokenctl)
        self.state, self.mnt = Path(state), Path(mnt)

    def start(self, timeout, fresh=True):
        self.stop()
        if fresh:
            shutil.rmtree(self.state, ignore_errors=True)
        self.mnt.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run([self.fsd, "mount", self.mnt, "--state", self.state, "--daemon"], timeout)
        return time.perf_counter() - t0

    def ctl(self, *args, timeout=60):
        out = run([self.tokenctl, "--state", self.state, "--json", *args], timeout)
        try:
            return json.loads(out) if out.strip() else {}
        except json.JSONDecodeError:
            return {"raw": out}

    def status(self, timeout=60):
        return self.ctl("status", timeout=timeout)

    def create(self, name, timeout=60):
        self.ctl("create", name, timeout=timeout)
        root = self.mnt / "volumes" / name
        os.stat(root)
        return root

    def catalog_files(self):
        return sorted(self.state.glob("catalog.db*")) if self.state.exists() else []

    def chunk_paths(self, hashes):
        return [self.state / "chunks" / h[:2] / h for h in hashes]

    def all_chunks(self):
        d = self.state / "chunks"
        return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []

    def daemon_pid(self):
        try:
            pid = int((self.state / "fsd.lock").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        # Only ever signal the fsd that serves our own state directory (a
        # stale lock may name a pid that now belongs to someone else).
        return pid if pid_alive(pid) and str(self.state) in pid_cmdline(pid) else None

    def discard_state(self, log_dir):
        """After stop: keep fsd.log, delete the rest of the state (the chunk
        store can hold gigabytes; the next run starts fresh anyway)."""
        if self.daemon_pid() is not None or is_mounted(self.mnt) or not self.state.exists():
            return
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        if (self.state / "fsd.log").exists():
            shutil.copy2(self.state / "fsd.log", log_dir / f"{self.state.name}.log")
        shutil.rmtree(self.state, ignore_errors=True)

    def stop(self):
        pid = self.daemon_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while (pid_alive(pid) or is_mounted(self.mnt)) and time.monotonic() < deadline:
                time.sleep(0.005)
            if pid_alive(pid):
                log(f"warning: fsd pid {pid} ignored SIGTERM for 30 s; killing it")
                os.kill(pid, signal.SIGKILL)
        force_unmount(self.mnt)


def treehash(path):
    try:
        return os.getxattr(path, "user.fsd.treehash").decode()
    except OSError:
        return None


# ---------------------------------------------------------------- the benchmark frame

class BenchBase:
    """Results, runs with a warm-up, and the result files; the scripts add
    their measurements and their report."""

    name = "bench"

    def __init__(self, args):
        self.args = args
        self.workdir = Path(args.workdir).resolve()
        self.runs = args.runs
        self.timeout = args.timeout
        self.results = []
        self.notes = []
        self.children = []
        self.cache = Cache(self.notes)
        self.nonce = new_nonce()        # this invocation's data never repeats an earlier one's

    def tag(self, *parts):
        return "/".join([self.nonce, *map(str, parts)])

    def record(self, measurement, kind, filesystem, samples=None, warmup=None,
               bound_value=None, bound=None, error=None, note=None, detail=None, **extra):
        r = {"measurement": measurement, "kind": kind, "better": BETTER[kind],
             "filesystem": filesystem, "runs": samples or [], "warmup": warmup,
             "statistic": "median", "value": None, "bound": None, "error": error,
             "note": note, "detail": detail or [], **extra}
        if bound_value is not None:
            r["value"], r["bound"] = bound_value, bound
        elif samples:
            r["value"] = statistics.median(samples)
        self.results.append(r)
        log(f"  {filesystem:22} {measurement:22} {fmt_result(r)}"
            + (f"  ({note})" if note else ""))
        return r

    def find(self, measurement, filesystem):
        for r in self.results:
            if (r["measurement"], r["filesystem"]) == (measurement, filesystem):
                return r
        return None

    def repeat(self, measurement, kind, filesystem, one_run, bound_on_timeout, note_fn=None,
               **extra):
        """Run one_run(i) for i = 0 (the warm-up, not counted: on this VM the
        first touch of freshly allocated memory is slow) and 1..runs. one_run
        returns (sample, detail) or raises Timeout / Failed. A timeout ends
        the measurement with the bound (value, '<' or '>')."""
        samples, details, warm = [], [], None
        for i in range(self.runs + 1):
            try:
                v, d = one_run(i)
            except Timeout as e:
                bv, b = bound_on_timeout
                return self.record(measurement, kind, filesystem, samples, warm, bv, b,
                                   note=f"{'warm-up' if i == 0 else f'run {i}'}: {e}",
                                   detail=details, **extra)
            except (Failed, OSError, ValueError, KeyError) as e:
                return self.record(measurement, kind, filesystem, samples, warm,
                                   error=f"failed: {e}", detail=details, **extra)
            if i == 0:
                warm = v
                details.append({"warmup": True, **(d or {})})
            else:
                samples.append(v)
                details.append(d or {})
        note = note_fn(details) if note_fn else None
        return self.record(measurement, kind, filesystem, samples, warm, note=note,
                           detail=details, **extra)

    # -- setup shared by both scripts

    def install_binaries(self):
        """A private copy of the release binaries: a concurrent `cargo build`
        must not swap fsd under a running benchmark."""
        rel = release_dir()
        (self.workdir / "bin").mkdir(parents=True, exist_ok=True)
        for b in ("fsd", "tokenctl"):
            shutil.copy2(rel / b, self.workdir / "bin" / b)
        self.fsd_bin = self.workdir / "bin" / "fsd"
        self.tokenctl_bin = self.workdir / "bin" / "tokenctl"

    def meta(self, command, params, method, tools):
        def git(*a):
            r = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True)
            return r.stdout.strip()
        return {
            "command": command,
            "mode": "quick" if self.args.quick else "full",
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                     "loadavg_at_start": os.getloadavg(),
                     "workdir_fs": fs_type(self.workdir)},
            "fsd": {"version": tool_version([str(self.fsd_bin), "--version"]),
                    "commit": git("rev-parse", "HEAD"),
                    "dirty_tree": bool(git("status", "--porcelain", "--untracked-files=no"))},
            "versions": {t: tool_version([t, "--version"]) for t in tools if shutil.which(t)},
            "params": params,
            "method": {"statistic": "median", "runs": self.runs, "warmup_runs": 1,
                       "timeout_s": self.timeout, **method},
        }

    def write_results(self, meta, text, command):
        suffix = "-quick" if self.args.quick else ""
        meta["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        meta["notes"] = self.notes
        meta["results"] = self.results
        js = self.workdir / f"results{suffix}.json"
        tx = self.workdir / f"results{suffix}.txt"
        js.write_text(json.dumps(meta, indent=2) + "\n")
        tx.write_text(f"command: {command}\n\n{text}\n")
        print(f"\nresults: {js} and {tx}")


def fs_type(path):
    try:
        return subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(path)],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def print_header(meta):
    f = meta["fsd"]
    print(f"started: {meta['started']}  kernel {meta['host']['kernel']}  "
          f"{meta['host']['cpus']} CPUs  load {meta['host']['loadavg_at_start'][0]:.2f}  "
          f"fsd {(f['commit'] or '?')[:12]}{' (dirty tree)' if f['dirty_tree'] else ''}  "
          f"workdir on {meta['host']['workdir_fs']}", flush=True)


class Signals:
    """Any signal becomes an exception so the caller's finally always
    unmounts; during cleanup a second Ctrl-C is ignored."""

    SIGS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __enter__(self):
        def on_signal(signum, _frame):
            raise KeyboardInterrupt(f"signal {signum}")
        # SIGINT too, explicitly: a shell starts background jobs with it ignored.
        for sig in self.SIGS:
            signal.signal(sig, on_signal)
        return self

    @classmethod
    def ignore(cls):
        for sig in cls.SIGS:
            signal.signal(sig, signal.SIG_IGN)

    def __exit__(self, *exc):
        return False


def check_common_args(ap, args):
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.timeout is None:
        args.timeout = 30.0 if args.quick else 120.0
    if os.geteuid() != 0:
        sys.exit(f"{ap.prog}: run as root (drop_caches and FUSE mounts need it)")
    return shlex.join([sys.argv[0], *sys.argv[1:]])
