"""Validates SARIF files against the official SARIF 2.1.0 JSON schema.

The schema is the `sarif-2.1.0.json` that Microsoft's SARIF SDK ships in the npm package
`@microsoft/sarif-multitool-linux` (pinned below); it is downloaded from the npm registry once and
cached, never copied into the repository. Validation uses the `jsonschema` package.

usage: sarif_validate.py CACHE_DIR FILE...   (exit 0: valid, 1: invalid, 3: cannot validate)
"""
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.request

PKG = "https://registry.npmjs.org/@microsoft/sarif-multitool-linux/-/sarif-multitool-linux-5.7.0.tgz"


def skip(msg):
    print(f"cannot validate: {msg}")
    sys.exit(3)


def schema(cache):
    path = os.path.join(cache, "sarif-schema-2.1.0.json")
    if not os.path.exists(path):
        try:
            data = urllib.request.urlopen(PKG, timeout=120).read()
        except Exception as e:  # noqa: BLE001 - any failure means no schema
            skip(f"downloading {PKG}: {e}")
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            member = t.extractfile("package/sarif-2.1.0.json")
            text = member.read()
        doc = json.loads(text)
        if "SARIF" not in doc.get("title", "") or "2.1.0" not in doc.get("title", ""):
            skip("the package's sarif-2.1.0.json is not the SARIF 2.1.0 schema")
        os.makedirs(cache, exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    with open(path) as f:
        return json.load(f)


def jsonschema_module(cache):
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        lib = os.path.join(cache, "pylib")
        if not os.path.isdir(os.path.join(lib, "jsonschema")):
            r = subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--target", lib, "jsonschema"],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                skip(f"pip install jsonschema: {r.stderr.strip()[-300:]}")
        sys.path.insert(0, lib)
    import jsonschema

    return jsonschema


def main():
    cache, files = sys.argv[1], sys.argv[2:]
    js = jsonschema_module(cache)
    sch = schema(cache)
    validator = js.validators.validator_for(sch)(sch)
    bad = 0
    for f in files:
        with open(f) as fh:
            doc = json.load(fh)
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        for e in errors[:20]:
            print(f"{f}: {'/'.join(map(str, e.path))}: {e.message}")
        bad += bool(errors)
    print(f"validated {len(files)} file(s) against {sch.get('title')}: {len(files) - bad} valid")
    sys.exit(1 if bad else 0)


main()
