"""A stand-in for a blender_scripts entry point, driven by its job JSON (tests of the job runner)."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from blender_scripts.job import exit_with_parent


def main() -> None:
    exit_with_parent()  # as blender_scripts.job.run_cli does
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    job = json.loads(Path(parser.parse_args().job).read_text())
    out = Path(job["out_dir"])
    counter = out / "attempts.txt"
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    (out / "pid.txt").write_text(str(os.getpid()))
    behaviour = job["behaviour"][min(n, len(job["behaviour"])) - 1]
    print(f"fake job attempt {n}: {behaviour}", flush=True)
    if behaviour == "ok":
        from PIL import Image

        Image.new("RGBA", (4, 4)).save(out / "image.png")  # outputs are checked by decoding them
        (out / "result.json").write_text(json.dumps({"status": "ok", "value": n}))
        os._exit(0)
    if behaviour == "bad":
        (out / "result.json").write_text(json.dumps({"status": "failed", "reason": "no_mesh", "detail": "d"}))
        sys.exit(3)
    if behaviour == "crash":
        os.abort()
    if behaviour == "hang":
        time.sleep(60)
    if behaviour == "no_outputs":
        (out / "result.json").write_text(json.dumps({"status": "ok"}))
        sys.exit(0)


if __name__ == "__main__":
    main()
