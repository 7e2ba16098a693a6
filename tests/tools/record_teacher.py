"""``fairseq-hydra-train`` with one probe: every EMA step appends a digest of the teacher to a file.

Usage (what the distributed test runs per rank): ``python record_teacher.py OUT_DIR <fairseq-hydra-train
arguments>``. After each teacher update, rank r appends ``<update> <sha256 of all teacher tensors>`` to
``OUT_DIR/rank{r}.txt``. The training itself is fairseq's own entry point, unchanged.
"""

import hashlib
import sys
from pathlib import Path

import torch.distributed as dist


def main() -> None:
    out = Path(sys.argv.pop(1))
    from fairseq_cli.hydra_train import cli_main

    from eat_plugin.models.data2vec_multi import Data2VecMultiModel

    original = Data2VecMultiModel.set_num_updates

    def recording(self, num_updates):
        original(self, num_updates)
        if self.teacher is None or not self.training:
            return
        digest = hashlib.sha256()
        for name, tensor in sorted(self.teacher.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        with open(out / f"rank{rank}.txt", "a") as f:
            f.write(f"{num_updates} {digest.hexdigest()}\n")

    Data2VecMultiModel.set_num_updates = recording
    cli_main()


if __name__ == "__main__":
    main()
