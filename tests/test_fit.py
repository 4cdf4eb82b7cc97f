"""incdsl fit: width multipliers found by search, what counts as a channel count, and the fitted spec."""

from __future__ import annotations

import pytest
from conftest import ROOT

import incdsl
from incdsl.analysis.fit import channel_params, fit
from incdsl.tools import cli

GOOGLENET = incdsl.parse(*incdsl.read("googlenet"))


def test_googlenet_fits_the_papers_budget():
    result = fit(GOOGLENET, 1_500_000_000)
    assert 0.97 * 1.5e9 <= result.macs <= 1.5e9
    assert result.original_macs == 1_582_671_872
    stats = incdsl.stats(incdsl.from_text(result.text, "fitted.inc"))
    assert stats.macs == result.macs and stats.budget == 1_500_000_000


def test_the_fitted_googlenet_builds_and_runs_in_torch():
    torch = pytest.importorskip("torch")
    net = incdsl.from_text(fit(GOOGLENET, 1_500_000_000).text, "fitted.inc")
    model = incdsl.build_module(net).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    inference = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux"))
    assert inference == incdsl.stats(net).params


def test_every_table1_column_is_scaled_consistently():
    result = fit(GOOGLENET, 1_000_000_000)
    m, before, after = result.multiplier, GOOGLENET.rows, result.spec.rows
    for old, new in zip(before, after):
        if old.kind != "inception":
            continue
        for a, b in zip(old.args, new.args):
            assert b.value == max(8, round(a.value * m / 8) * 8)
            assert b.value % 8 == 0


def test_what_is_not_a_channel_count_stays():
    spec = fit(GOOGLENET, 1_000_000_000).spec
    rows = {r.name.text: r for r in spec.rows if r.name}
    assert str(rows["conv1"].args[0].value) == "7x7/2"  # the kernel
    assert rows["dropout"].args[0].value == 0.4
    assert rows["fc"].args[0].value == incdsl.syntax.ast.Ref("classes")
    assert [str(a.value) for a in rows["norm1"].args] == ["5", "0.0001", "0.75"]


def test_a_budget_above_the_network_grows_it():
    result = fit(GOOGLENET, 3_000_000_000)
    assert result.multiplier > 1.3 and 0.97 * 3e9 <= result.macs <= 3e9


def test_channel_parameters_are_found_through_nested_templates():
    spec = incdsl.parse(
        "input 32x32x3\n"
        "template inner(w, p) {\n    conv 3x3 w\n    dropout p\n}\n"
        "template outer(a, b, q) {\n    inner a q\n    branch: conv 1x1 b\n    branch: maxpool 3x3/1 pad=1\n}\n"
        "s: outer 32 16 0.5\n"
    )
    templates = {t.name: t for t in spec.templates}
    params = channel_params(templates)
    assert params["inner"] == {"w"} and params["outer"] == {"a", "b"}
    result = fit(spec, 4_000_000, multiple=4)
    (row,) = result.spec.rows
    assert row.args[2].value == 0.5  # a dropout rate passed through a template stays


def test_a_linear_classifier_written_as_a_number_is_not_scaled():
    spec = incdsl.parse("input 8x8x3\nclasses 10\nconv 3x3 64\nlinear 256 relu\nlinear 10\n")
    result = fit(spec, 200_000)
    conv, hidden, logits = result.spec.rows
    assert conv.args[1].value < 64 and hidden.args[0].value < 256
    assert logits.args[0].value == 10


def test_fixed_widths_in_template_bodies_scale_too():
    result = fit(incdsl.parse(*incdsl.read("inception_v3")), 2_000_000_000)
    assert 0.97 * 2e9 <= result.macs <= 2e9
    body = {t.name: t for t in result.spec.templates}["InceptionA"].body
    assert body[0].items[0].args[1].value == max(8, round(64 * result.multiplier / 8) * 8)


def test_per_stage_keeps_each_stages_share():
    result = fit(GOOGLENET, 1_500_000_000, per_stage=True)
    assert 0.97 * 1.5e9 <= result.macs <= 1.5e9
    assert "Each stage's widths scaled" in result.text
    assert len(set(result.scaling.stages)) > 2  # not one multiplier


def test_depth_scales_repeat_counts():
    spec = incdsl.parse(
        "input 16x16x8\nblock: 4x conv 3x3 16\nfc: linear 10\n",
    )
    result = fit(spec, 1_000_000, multiple=4, depth=True)
    assert result.spec.rows[0].repeat < 4 and result.macs <= 1_000_000


def test_an_impossible_budget_is_an_error():
    with pytest.raises(incdsl.IncdslError, match="no width multiplier"):
        fit(GOOGLENET, 1_000)


def test_fit_command_writes_a_spec_that_checks(capsys, tmp_path):
    out = tmp_path / "fitted.inc"
    assert cli.main(["fit", "googlenet", "--budget", "1.5G", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "width multiplier 0.96" in printed and f"wrote {out}" in printed
    text = out.read_text()
    assert text.startswith("# Fitted by `incdsl fit googlenet --budget 1.5G`.")
    assert cli.main(["check", str(out)]) == 0


def test_fit_command_without_a_budget(capsys, tmp_path):
    spec = tmp_path / "nobudget.inc"
    spec.write_text("input 8x8x3\nconv 3x3 8\n")
    assert cli.main(["fit", str(spec)]) == 2
    assert "declares no budget" in capsys.readouterr().err
    assert cli.main(["fit", str(ROOT / "specs" / "mini_googlenet.inc"), "--budget", "2x"]) == 2


def test_a_spec_with_an_error_reports_it_where_it_is(capsys, spec_file):
    path = spec_file("input 8x8x3\nbudget 1M\nconv 3x3 8\nconv 9x9/1 8 pad=0\n")
    assert cli.main(["fit", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:4:1: error: conv 9x9/1 (pad 0x0) does not fit its 8x8 input")


def test_per_stage_builds_the_ir_at_most_once_per_measurement_and_parses_nothing(monkeypatch):
    from incdsl.ir import tree as ir
    from incdsl.syntax import parser

    parser.prelude()
    builds, parses = [], []
    build, parse = ir.build, parser.parse
    monkeypatch.setattr(ir, "build", lambda *a, **k: builds.append(k.get("rows")) or build(*a, **k))
    monkeypatch.setattr(parser, "parse", lambda *a, **k: parses.append(a) or parse(*a, **k))
    result = fit(GOOGLENET, 1_500_000_000, per_stage=True)
    assert parses == []  # no text: every trial is built from the scaled AST
    assert 0 < len(builds) <= result.measurements
    assert len(builds) < 400  # distinct trials; before, each of ~1,350 measurements was a parse and a build
    # the search measured parts of the network; the whole fitted text, parsed and built, agrees
    stats = incdsl.stats(incdsl.from_text(result.text, "fitted.inc"))
    assert stats.macs == result.macs and stats.params == result.params and result.macs <= 1_500_000_000


def test_per_stage_finds_what_measuring_whole_prefixes_finds(monkeypatch):
    """Each group's trials build only the rows not yet final, from their input; measuring the whole
    prefix instead (as fit did) chooses the same multipliers."""
    from incdsl.analysis import fit as fitting

    spec = incdsl.parse(*incdsl.read("mini_googlenet"))
    budget = int(incdsl.stats(incdsl.network(spec)).macs * 0.8)
    fast = fit(spec, budget, per_stage=True)
    monkeypatch.setattr(fitting, "_advance", lambda measure, spec, rows, x, final: (0, None))
    slow = fit(spec, budget, per_stage=True)
    assert fast.scaling == slow.scaling and fast.text == slow.text


def test_a_layers_width_is_found_after_a_kernel_written_with_names():
    """``conv kxk/s c``: the layer table says the width is the argument after the kernel, whatever
    the kernel is written as (MobileNetV2's ``cna`` template: its stem and last conv scale too)."""
    spec = incdsl.parse(*incdsl.read("mobilenet_v2"))
    params = channel_params({t.name: t for t in spec.templates})
    assert params["cna"] == {"c"}
    assert params["inverted_residual"] == {"c"}


CONVNEXT = incdsl.parse(*incdsl.read("convnext_tiny"))


@pytest.mark.parametrize("per_stage", [False, True])
def test_convnext_fits_through_its_nested_groups(per_stage):
    """ConvNeXt's rows are groups nested in top-level ones (``sequential res2 { ... }`` holding the
    downsampling's ``sequential { ... }``): their widths scale (fit once found no multiplier at all),
    and per stage, a stage of residual blocks without a projection shares the multiplier of what
    feeds it (its stem, or the downsampling before it): scaled alone, its adds would not build."""
    result = fit(CONVNEXT, 3_000_000_000, per_stage=per_stage)
    assert 0.95 * 3e9 <= result.macs <= 3e9 and result.original_macs == 4_455_531_264
    net = incdsl.from_text(result.text, "fitted.inc")
    assert incdsl.stats(net).macs == result.macs
    if per_stage:
        stages = result.scaling.stages  # stem, res2, downsampling, res3, downsampling, res4, ...
        assert stages[0] == stages[1] and stages[2] == stages[3] and stages[4] == stages[5]
        assert len(set(stages[:8])) > 1  # not one multiplier


def test_a_depthwise_convolution_written_with_numbers_keeps_one_group_per_channel():
    """MNASNet's ``conv 3x3 32 groups=32``: its groups scale with its width (fit once found no
    multiplier: 32 groups of a 24-channel convolution do not build); ResNeXt's ``groups=32`` of
    ``w*2`` is a cardinality and stays."""
    result = fit(incdsl.parse(*incdsl.read("mnasnet1_0")), 220_000_000)
    assert "sep1: conv 3x3 24 groups=24" in result.text
    resnext = fit(incdsl.parse(*incdsl.read("resnext50_32x4d")), 3_000_000_000)
    assert "groups=32" in resnext.text


def test_stages_tied_through_a_reduction_share_a_multiplier():
    """Inception-ResNet-v2's reductions concatenate their input onto their branches, so the residual
    stages on either side are tied: per stage, mixed_5b to block8 take one multiplier (fit once found
    none); the stem's convolutions, which feed any width, keep their own."""
    spec = incdsl.parse(*incdsl.read("inception_resnet_v2"))
    result = fit(spec, 9_200_000_000, per_stage=True)
    assert result.macs <= 9.2e9 and incdsl.stats(incdsl.from_text(result.text, "f.inc")).macs == result.macs
    tied = [
        m for row, m in zip(spec.rows, result.scaling.stages) if row.kind in ("mixed_5b", "block35", "block8")
    ]
    assert len(set(tied)) == 1 and len(set(result.scaling.stages)) > 2


def test_the_header_names_aux_heads_only_where_there_are_some():
    assert "aux heads'" in fit(GOOGLENET, 1_500_000_000, per_stage=True).text
    assert "aux heads'" not in fit(CONVNEXT, 3_000_000_000, per_stage=True).text
