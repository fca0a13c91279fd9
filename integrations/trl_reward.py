"""A TRL reward function backed by `srcode serve` (GRPOTrainer, RLOOTrainer, ...).

    from trl import GRPOTrainer
    from trl_reward import srcode_reward_func
    trainer = GRPOTrainer(model=..., reward_funcs=[srcode_reward_func], ...)

TRL's reward functions return one number per completion, so this is the scalar total of
srcode's token and instance rewards (TRL's GRPO has no per-token reward input). For the
per-token signal use srcode's own trainer or the verl manager with GAE. Dataset columns
`language`, `pair` and `function_name` are passed through when present.
"""

from srcode_rewards import SrcodeRewardClient

__all__ = ["make_reward_func", "srcode_reward_func"]


def _text(completion):
    # Conversational datasets give [{"role": "assistant", "content": ...}].
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return completion


def make_reward_func(base_url=None, api_key=None, language=None):
    client = SrcodeRewardClient(base_url, api_key)

    def srcode_reward_func(prompts, completions, **kwargs):
        items = []
        for i, c in enumerate(completions):
            item = {"response": _text(c)}
            for name in ("language", "pair", "function_name"):
                col = kwargs.get(name)
                if col is not None and col[i] is not None:
                    item[name] = col[i]
            if "language" not in item and language:
                item["language"] = language
            items.append(item)
        return [r["reward"] for r in client.token_rewards(items)]

    return srcode_reward_func


srcode_reward_func = make_reward_func()
