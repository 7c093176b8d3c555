#!/usr/bin/env python
"""Embed a trained pipeline folder in the package as the offline default model (`spectrafm-base`).

    python scripts/embed_default_model.py runs/pretrain_cpu/final [--name spectrafm-base]

Copies config.json, model.safetensors, preprocessor_config.json, training_info.json and the package's own code files
into src/spectrafm_hf/resources/models/<name>/ and writes its model card (README.md) from hub_cards/. After that,
`SpectraFMPipeline.from_pretrained("spectrafm-base")` and `spectrafm predict` use it without any download, and
`spectrafm install` puts it in the local Hugging Face cache so `AutoModel.from_pretrained("spectrafm-base")` works.
Then calibrate its reliability statistics (training S/N range, out-of-distribution embedding statistics, continuum
method; stored in its preprocessor_config.json):

    python benchmarks/reliability_stats.py src/spectrafm_hf/resources/models/spectrafm-base
"""

import argparse
import shutil
import sys
from pathlib import Path

from spectrafm_hf.checkpoint_folder import CODE_FILES, PACKAGE_DIR
from spectrafm_hf.hub import EMBEDDED_DIR, atomic_directory, render_model_card

KEEP = ("config.json", "model.safetensors", "preprocessor_config.json", "training_info.json")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--name", default="spectrafm-base")
    parser.add_argument("--summary", default=None, help="one paragraph for the card")
    args = parser.parse_args(argv)
    src = Path(args.folder)
    missing = [f for f in KEEP if not (src / f).is_file()]
    if missing:
        print(f"error: {src} lacks {missing}", file=sys.stderr)
        return 2
    target = EMBEDDED_DIR / args.name
    with atomic_directory(target) as tmp:
        for name in KEEP:
            shutil.copy2(src / name, Path(tmp) / name)
        for name in CODE_FILES:  # the code of the package it ships in (remote-code users get this version)
            shutil.copyfile(PACKAGE_DIR / name, Path(tmp) / name)
        card = render_model_card(tmp, kind="base", repo_id=args.name,
                                 **({"summary": args.summary} if args.summary else {}))
        card.save(str(Path(tmp) / "README.md"))
    size = sum(p.stat().st_size for p in target.iterdir()) / 1e6
    print(f"embedded {src} as {args.name} ({size:.1f} MB) in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
