"""Writes the 12 demo pairs whose description tasks the base SmolLM2-135M answered with an
analyser finding most often in a 60-task probe (n=4, 192 tokens): the RL prompts of
hot-prompts.sh and hot-ablation.sh. Usage: hot-pairs.py PAIRS.jsonl OUT.jsonl"""
import json
import sys

HOT = {"demo-py-008", "demo-c-006", "demo-py-009", "demo-c-001", "demo-c-002", "demo-c-013",
       "demo-py-006", "demo-py-021", "demo-py-024", "demo-c-007", "demo-c-011", "demo-c-016"}

with open(sys.argv[2], "w") as f:
    for line in open(sys.argv[1]):
        if line.strip() and json.loads(line)["id"] in HOT:
            f.write(line)
