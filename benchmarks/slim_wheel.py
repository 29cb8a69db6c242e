"""Rewrite a bitsandbytes wheel with only the native libraries one GPU image loads (the device tool carries 64 MiB).

    python benchmarks/slim_wheel.py .wheelhouse/bitsandbytes-*.whl --keep cuda130 cuda132 cpu

The wheel ships one libbitsandbytes_<backend>.so per CUDA/ROCm/XPU release (~43 MB in all); bitsandbytes loads the
one matching torch.version.cuda (the GPU image's torch is 2.11.0+cu130). The others are dropped from the archive and
from its RECORD, in place, so pip installs the slim wheel as it would the full one.
"""
import argparse
import os
import re
import tempfile
import zipfile

LIBRARY = re.compile(r"bitsandbytes/libbitsandbytes_(\w+)\.(so|dll|dylib)$")


def slim(path: str, keep: set[str]) -> tuple[int, int]:
    """Drop the native libraries whose backend is not in `keep`; returns (bytes before, bytes after)."""
    before = os.path.getsize(path)
    with zipfile.ZipFile(path) as src:
        dropped = {i.filename for i in src.infolist()
                   if (m := LIBRARY.search(i.filename)) and m.group(1) not in keep}
        handle, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".whl.part")
        os.close(handle)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if info.filename in dropped:
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    data = "".join(line for line in data.decode().splitlines(True)
                                   if line.split(",", 1)[0] not in dropped).encode()
                dst.writestr(info, data)
    os.replace(tmp, path)
    return before, os.path.getsize(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", help="the bitsandbytes wheel, rewritten in place")
    parser.add_argument("--keep", nargs="+", default=["cuda130", "cuda132", "cpu"],
                        help="backends whose library stays (default: cuda130 cuda132 cpu)")
    args = parser.parse_args()
    before, after = slim(args.wheel, set(args.keep))
    print(f"{args.wheel}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB (kept {', '.join(args.keep)})")


if __name__ == "__main__":
    main()
