"""Parsing one large text file by several processes at once: the first byte range in this
process, each other one in a forked process, their column files then joined in file order."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import traceback

from paddle_rec_zoo.data.column_files import COLUMNS, write_columns
from paddle_rec_zoo.data.read_stats import ReadStats
from paddle_rec_zoo.errors import UserError

_MIN_PART_BYTES = 32 << 20  # smaller files are parsed by one process (forking costs more)


def usable_cores() -> int:
    """The cores this process may run on (its affinity), or all of them where that is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_cuts(path: str, reader, workers: int | None) -> list[int]:
    """Byte offsets cutting `path` into one range per parsing process ([0, size]: one).

    Parallel parsing needs `fork` and a reader whose class says `supports_ranges = True`: its
    `read_file(path, start, end)` reads the lines that start in bytes [start, end), so equal
    byte ranges split the file at line starts. Any other reader is run in one process, with
    `read_file(path)`.
    """
    size = os.path.getsize(path)
    parts = min(workers or usable_cores(), size // _MIN_PART_BYTES)
    if (
        parts < 2
        or not getattr(reader, "supports_ranges", False)  # optional in the reader contract
        or "fork" not in multiprocessing.get_all_start_methods()
        or multiprocessing.current_process().daemon  # may not start processes of its own
    ):
        return [0, size]
    return [size * k // parts for k in range(parts + 1)]


def _parse_range(path: str, reader, folder: str, ids_dtype, start: int, end: int) -> dict:
    """Parse the lines starting in bytes [start, end) of `path` into `folder`; a result dict
    instead of exceptions."""
    try:
        n, info = write_columns(reader.read_file(path, start, end), folder, ids_dtype)
        return {"rows": n, "info": info}
    except UserError as e:
        return {"user_error": str(e)}
    except BaseException:  # a bug: keep its traceback for the parent
        return {"error": traceback.format_exc()}


def _range_worker(path, reader, folder, ids_dtype, start, end):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the handler Paddle installed in the parent
    result = _parse_range(path, reader, folder, ids_dtype, start, end)
    with open(os.path.join(folder, "result.json"), "w") as f:
        json.dump(result, f)


def _start_workers(path, reader, tmp, ids_dtype, cuts) -> list:
    """A forked process for each range but the first: [(its folder, process)]."""
    ctx = multiprocessing.get_context("fork")
    children = []
    for k in range(1, len(cuts) - 1):
        folder = os.path.join(tmp, f"part-{k}")
        os.mkdir(folder)
        args = (path, reader, folder, ids_dtype, cuts[k], cuts[k + 1])
        proc = ctx.Process(target=_range_worker, args=args, daemon=True)
        proc.start()
        children.append((folder, proc))
    return children


def _collect(children) -> list[dict]:
    results = []
    for folder, proc in children:
        proc.join()
        try:
            with open(os.path.join(folder, "result.json")) as f:
                results.append(json.load(f))
        except OSError:
            results.append({"error": f"parsing process exited with status {proc.exitcode}"})
    return results


def _raise_first_error(path, results):
    """The errors of a one-process parse: the first bad line of the file is reported."""
    for result in results:
        if "user_error" in result:
            raise UserError(result["user_error"])
        if "error" in result:
            raise RuntimeError(f"parsing {path} failed:\n{result['error']}")


def _append_parts(tmp, folders):
    for folder in folders:
        for name in COLUMNS:
            with open(os.path.join(tmp, f"{name}.bin"), "ab") as out:
                with open(os.path.join(folder, f"{name}.bin"), "rb") as part:
                    shutil.copyfileobj(part, out, 16 << 20)
        shutil.rmtree(folder)


def write_columns_parallel(path, reader, tmp, ids_dtype, cuts) -> tuple[int, dict]:
    """Parse the runs of lines between `cuts` at once into the column files of `tmp`, this
    process taking the first and one forked process each of the others, then appending their
    columns in order. Returns (rows, info) as `write_columns` does for the whole file."""
    children = _start_workers(path, reader, tmp, ids_dtype, cuts)
    results = [_parse_range(path, reader, tmp, ids_dtype, cuts[0], cuts[1])]
    results += _collect(children)
    _raise_first_error(path, results)
    _append_parts(tmp, [folder for folder, _ in children])
    stats = ReadStats()
    for result in results:
        stats.add(result["info"])
    return sum(r["rows"] for r in results), stats.info()
