"""A verl reward manager that fills verl's per-token reward tensor from `srcode serve`.

verl's PPO trainer takes a reward manager's `reward_tensor` of shape (batch, response_length)
as the token-level scores. Most managers put one scalar on the last valid token; this one puts
srcode's reward on every token it belongs to (the analyser's vulnerable spans negative, secure
patterns positive) and the instance reward on the last valid token.

Keep the density: use a per-token advantage estimator (`algorithm.adv_estimator=gae`, PPO with
a critic). GRPO-style estimators (grpo, rloo, reinforce_plus_plus baselines) sum the scores of a
response into one number before normalising, which throws the token-level signal away; and
verl's newer asynchronous reward-loop path (`reward_model.use_reward_loop`) returns one scalar
per sample, so it cannot carry token rewards either: use the classic reward-manager path.

Use (verl ≥ 0.4), with this directory on PYTHONPATH and this module imported before the trainer
builds its reward manager (importing it registers the name "srcode"):
    export SRCODE_REWARD_URL=http://127.0.0.1:8000
    python -m verl.trainer.main_ppo ... \\
        reward_model.reward_manager=srcode algorithm.adv_estimator=gae \\
        +reward_model.reward_kwargs.language=c      # when the data has no `language` column
Samples may carry `language`, `pair` ({vulnerable, fixed}) and `function_name` in
`non_tensor_batch` (or inside `extra_info`) to use the repair-pair patterns of PrimeVul+.
"""

from collections import defaultdict

from srcode_rewards import SrcodeRewardClient

try:  # registered under the name "srcode" when verl is installed
    from verl.workers.reward_manager import register as _verl_register
except Exception:  # verl absent: the class is still usable directly
    _verl_register = None


def _zeros_like(x):
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    except ImportError:
        pass
    import numpy as np

    return np.zeros(x.shape, dtype=np.float32)


def _ids(row):
    return [int(t) for t in (row.tolist() if hasattr(row, "tolist") else row)]


def _field(data, name, i):
    ntb = getattr(data, "non_tensor_batch", None) or {}
    if name in ntb:
        return ntb[name][i]
    extra = ntb.get("extra_info")
    if extra is not None:
        e = extra[i]
        if isinstance(e, dict) and name in e:
            return e[name]
    return None


class SrcodeRewardManager:
    """verl reward manager: `__call__(data, return_dict=False)` → reward tensor (batch, resp_len)."""

    def __init__(self, tokenizer, num_examine=0, compute_score=None, reward_fn_key="data_source",
                 base_url=None, api_key=None, language=None, **kwargs):
        self.tokenizer = tokenizer
        self.num_examine = num_examine
        self.reward_fn_key = reward_fn_key
        self.language = language
        self.client = SrcodeRewardClient(base_url, api_key)

    def __call__(self, data, return_dict=False):
        responses = data.batch["responses"]
        prompt_len = data.batch["prompts"].shape[-1]
        mask = data.batch["attention_mask"]
        reward = _zeros_like(responses)
        items, lengths = [], []
        for i in range(len(responses)):
            valid = int(mask[i][prompt_len:].sum())
            ids = _ids(responses[i][:valid])
            item = {
                "response": self.tokenizer.decode(ids, skip_special_tokens=False),
                "response_token_ids": ids,
            }
            for name in ("language", "pair", "function_name"):
                v = _field(data, name, i)
                if v is not None:
                    item[name] = v
            if "language" not in item and self.language:
                item["language"] = self.language
            items.append(item)
            lengths.append(valid)
        results = self.client.token_rewards(items)
        extra = defaultdict(list)
        for i, (r, valid) in enumerate(zip(results, lengths)):
            dense = list(r["token_rewards"])
            if valid:
                dense[valid - 1] += r["instance_reward"]
            for t, v in enumerate(dense[:valid]):
                reward[i, t] = v
            extra["srcode_reward"].append(r["reward"])
            extra["srcode_findings"].append(len(r["findings"]))
            if i < self.num_examine:
                print("[srcode]", items[i]["response"][:200], "->", r["reward"])
        if return_dict:
            return {"reward_tensor": reward, "reward_extra_info": dict(extra)}
        return reward


if _verl_register is not None:
    SrcodeRewardManager = _verl_register("srcode")(SrcodeRewardManager)
