"""Layer-major execution (measure/stream.py) over weights streamed from disk: the same numbers as a plain
in-memory run, bit for bit (same arithmetic, same order of sums), with every block's weights read once."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from accelerate.hooks import AlignDevicesHook
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from skipprune.cli import main
from skipprune.export.offload import streaming_map
from skipprune.measure.importance import measure_importance
from skipprune.measure.perplexity import perplexity
from skipprune.measure.stream import blocks_of, offloaded

from tiny import FAMILY_NAMES, anatomy_of

runner = importlib.import_module("skipprune.measure.runner")
DEMO = "skipprune/data/demo-model"


def windows(n=3, length=12):
    return torch.randint(0, 128, (n, length), generator=torch.Generator().manual_seed(0))


def on_disk(folder, tmp_path):
    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, device_map=streaming_map(folder), offload_folder=str(tmp_path / "offload")
    ).eval()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_streamed_measurements_equal_in_memory_ones(family, family_sources, tmp_path):
    folder, anatomy, ws = family_sources[family], anatomy_of(family), windows()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    streamed = on_disk(folder, tmp_path)
    assert offloaded(streamed) and not offloaded(model)
    assert set(streamed.hf_device_map.values()) == {"disk"} and len(streamed.hf_device_map) > 6  # one entry a block
    ppl, protocol = perplexity(model, ws, "t")
    assert protocol.schedule == "window by window"
    for m, layer_major in ((model, True), (streamed, None)):
        got, proto = perplexity(m, ws, "t", layer_major=layer_major)
        assert got == ppl and proto.schedule == "block by block"
    importance = measure_importance(model, anatomy, ws)
    assert measure_importance(model, anatomy, ws, layer_major=True) == importance
    assert measure_importance(streamed, anatomy, ws) == importance
    assert all(p.device.type == "meta" for p in blocks_of(streamed).parameters())  # nothing left held
    assert torch.is_grad_enabled()  # no torch.no_grad left open


def test_every_block_is_read_once(family_sources, tmp_path, monkeypatch):
    streamed = on_disk(family_sources["llama"], tmp_path)
    loads: dict[str, int] = {}
    names = {id(m): n for n, m in streamed.named_modules()}
    pre_forward = AlignDevicesHook.pre_forward

    def counted(self, module, *args, **kwargs):
        if self.offload:
            loads[names[id(module)]] = loads.get(names[id(module)], 0) + 1
        return pre_forward(self, module, *args, **kwargs)

    monkeypatch.setattr(AlignDevicesHook, "pre_forward", counted)
    perplexity(streamed, windows(n=5), "t")
    in_blocks = {n: c for n, c in loads.items() if n.startswith("model.layers.")}  # accelerate hooks each leaf
    assert {n.split(".")[2] for n in in_blocks} == set("012345") and set(in_blocks.values()) == {1}, loads
    # embeddings and head: once for the recording pass, once for the final pass
    assert loads["model.embed_tokens"] == 2


def test_a_model_that_does_not_fit_is_streamed(tmp_path, monkeypatch):
    args = ["eval", DEMO, "--no-speed", "--device", "cpu", "--seq-len", "64"]
    assert CliRunner().invoke(main, [*args, "--json", str(tmp_path / "mem.json")]).exit_code == 0
    monkeypatch.setattr(runner, "available_memory", lambda: 1 << 20)  # 1 MiB free
    res = CliRunner().invoke(main, [*args, "--json", str(tmp_path / "disk.json")])
    assert res.exit_code == 0, res.output
    mem, disk = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("mem", "disk"))
    assert disk["perplexity"] == mem["perplexity"]
    assert (mem["perplexity_protocol"]["schedule"], disk["perplexity_protocol"]["schedule"]) == (
        "window by window",
        "block by block",
    )


def test_analyze_streamed_equals_analyze_in_memory(tmp_path):
    def analyze(*extra):
        out = tmp_path / f"a{len(extra)}.json"
        args = ["analyze", DEMO, "--samples", "3", "--seq-len", "32", "--device", "cpu", "--json", str(out)]
        res = CliRunner().invoke(main, [*args, *extra])
        assert res.exit_code == 0, res.output
        return json.loads(out.read_text())

    in_memory, streamed = analyze(), analyze("--device-map", "stream")
    assert in_memory == streamed and in_memory["tokens"] == 3 * 32


def test_heal_refuses_to_stream(tmp_path):
    from skipprune.errors import PlanError
    from skipprune.heal import heal

    with pytest.raises(PlanError, match="cannot train"):
        heal(DEMO, tmp_path / "o", text="bundled", method="lm", device_map="stream")
    assert not (tmp_path / "o").exists()


def test_speed_is_not_timed_from_disk(caplog, tmp_path):
    """A streamed model reads its weights from disk at every forward: timing it would time the disk."""
    import skipprune
    from skipprune.data import HELDOUT

    text = tmp_path / "t.txt"
    text.write_text(HELDOUT.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    with caplog.at_level("INFO", logger="skipprune"):
        results = skipprune.evaluate(DEMO, text=str(text), seq_len=32, device="cpu", device_map="stream")
    assert results.speed is None and results.perplexity is not None
    assert "speed not measured: the weights are read from disk" in caplog.text


def test_a_model_without_a_block_list_is_refused_in_one_line(monkeypatch):
    from skipprune.export import offload
    from skipprune.families.discover import NoDecoderBlocks

    def none(*args, **kwargs):
        raise NoDecoderBlocks("no list of 12 decoder blocks")

    monkeypatch.setattr(offload, "streaming_map", none)
    res = CliRunner().invoke(main, ["eval", DEMO, "--no-speed", "--device-map", "stream"])
    assert res.exit_code == 1 and "cannot run block by block (no list of 12 decoder blocks)" in res.output
    assert "Traceback" not in res.output and "internal error" not in res.output


def test_max_memory_does_not_apply_to_streaming():
    res = CliRunner().invoke(main, ["analyze", DEMO, "--device-map", "stream", "--max-memory", "cpu=1GiB"])
    assert res.exit_code == 1 and "--max-memory only applies with --device-map auto" in res.output
