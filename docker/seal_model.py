"""Build step of the Dockerfile: assemble the offline default model, then make its seal survive
`COPY --from` (which keeps whole-second mtimes only): the file's mtime is set to a whole second
and the `.verified` seal rewritten to match, then checked. Runs with the chunks on PYTHONPATH."""

import json
import os

from model_core.paths import DEFAULT_MODEL, SHIPPED, _verified, default_model_path

model = default_model_path()
stat = model.stat()
whole = stat.st_mtime_ns // 10**9 * 10**9
os.utime(model, ns=(whole, whole))
seal = model.with_name(model.name + ".verified")
data = json.loads(seal.read_text())
data["mtime_ns"] = whole
seal.write_text(json.dumps(data))
assert _verified(model, SHIPPED[DEFAULT_MODEL]), "the rewritten seal does not verify"
print("assembled and sealed", model, stat.st_size // 2**20, "MiB")
