"""transformers' logits of both pretraining heads for make_sop_student.py's folders.

Needs torch and transformers (`make golden`). Reads sop_albert/ and sop_bert/ with
`AutoModelForPreTraining` (AlbertForPreTraining: `sop_classifier`; BertForPreTraining:
`cls.seq_relationship`), checks that every tensor was used and none was missing, and
writes sop_logits.npz: padded segment-pair inputs, the masked-LM logits and the
order head's logits of each.
"""

import numpy as np
import torch
from transformers import AutoModelForPreTraining

from make_golden import HERE, inputs


def main():
    rng = np.random.default_rng(0)
    out = {}
    for name, order in (("sop_albert", "sop_logits"), ("sop_bert", "seq_relationship_logits")):
        model, info = AutoModelForPreTraining.from_pretrained(HERE / name,
                                                              output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        model.eval()
        ids, mask = inputs(model.config.vocab_size, 0, rng)
        types = np.zeros_like(ids)
        types[:, 6:] = 1  # a second segment
        types *= mask
        with torch.no_grad():
            result = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                           token_type_ids=torch.tensor(types))
        out |= {f"{name}_ids": ids, f"{name}_mask": mask, f"{name}_types": types,
                f"{name}_logits": result.prediction_logits.numpy(),
                f"{name}_order": getattr(result, order).numpy()}
    np.savez_compressed(HERE / "sop_logits.npz", **out)
    print("wrote sop_logits.npz")


if __name__ == "__main__":
    main()
