#!/usr/bin/env python
"""Convert a checkpoint folder of the SpectraFM paper's code into a spectrafm_hf folder.

    python scripts/convert_original_checkpoint.py ORIGINAL_DIR OUTPUT_DIR

ORIGINAL_DIR holds weights.pt, config.json and embed_map.npz (e.g. training/3_fefinetune_chunk/epoch_120 of the
paper's release). OUTPUT_DIR then loads with SpectraFMPipeline.from_pretrained / AutoModel.from_pretrained.
"""

import argparse
import sys

from spectrafm_hf.convert import convert_original_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder holding other files (only the checkpoint's files are replaced)")
    args = parser.parse_args(argv)
    try:
        model = convert_original_checkpoint(args.original_dir, args.output_dir, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output_dir}: labels {model.config.label_names}, {model.num_parameters():,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
