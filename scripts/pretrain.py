#!/usr/bin/env python
"""Pretrain SpectraFM (stage 1) with the Hugging Face Trainer.

    python scripts/pretrain.py scripts/configs/pretrain_cpu.yaml [--field value ...]
    accelerate launch --multi_gpu --num_processes 8 scripts/pretrain.py scripts/configs/pretrain_paper.yaml
    torchrun --nproc_per_node 2 scripts/pretrain.py CONFIG.yaml --use_cpu true     # 2-process DDP on CPU (gloo)

Every field of ModelArguments, DataArguments (spectrafm_hf.training.run) and transformers.TrainingArguments can be
set in the YAML file or as a flag. The final pipeline folder is written to <output_dir>/final, with
training_info.json. --push_to_hub publishes the checkpoints and the final model (with its card and code files) to
--hub_model_id ORG/NAME (default: <user>/<output_dir name>), on --hub_revision BRANCH if given (created when missing;
main is then left alone), with --hub_token if given and --hub_private_repo (default: the Hub's visibility).
"""

from spectrafm_hf.training.run import parse_args, run_training

if __name__ == "__main__":
    model_args, data_args, training_args = parse_args()
    
    run_training(model_args, data_args, training_args)
