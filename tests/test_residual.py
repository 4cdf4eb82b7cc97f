"""The language of issue 8: residual blocks, relu rows, average pools that exclude their padding, a 0
in a template column, flag arguments, sequential groups and the stats columns templates title."""

import pytest

import incdsl
from incdsl.backends.graphviz import to_dot
from incdsl.errors import IncdslError

torch = pytest.importorskip("torch")

HEADER = "network Net\ninput 16x16x8\nclasses 4\ndefaults conv: bn\n"


def load(body: str):
    return incdsl.from_text(HEADER + body, "n.inc")


def error(body: str) -> IncdslError:
    with pytest.raises(IncdslError) as info:
        load(body)
    return info.value


RESNET = """
template basic(c) {
    residual {
        conv1: conv 3x3 c
        conv2: conv 3x3 c norelu
    }
}
template down(c) {
    residual {
        conv1: conv 3x3/2 c
        conv2: conv 3x3 c norelu
        shortcut downsample: conv 1x1/2 c norelu
    }
}
stem: conv 3x3 16
layer1: 2x basic 16
layer2: down 32
pool: global_avgpool
fc: linear classes
"""


def test_a_resnet_is_writable_and_computes_relu_of_x_plus_f_of_x():
    net = load(RESNET)
    model = incdsl.build_module(net).eval()
    x = torch.randn(2, 8, 16, 16)
    block = model.layer1_1
    inside = torch.randn(2, 16, 16, 16)
    expected = torch.relu(block.conv2(block.conv1(inside)) + inside)
    torch.testing.assert_close(block(inside), expected)
    assert model(x).shape == (2, 4)
    down = model.layer2
    expected = torch.relu(down.conv2(down.conv1(inside)) + down.downsample(inside))
    torch.testing.assert_close(down(inside), expected)
    assert incdsl.stats(net).params == sum(p.numel() for p in model.parameters())


def test_a_residual_whose_shapes_disagree_is_a_spec_error_showing_both():
    exc = error("template b { residual { conv 3x3 16 } }\nb\n")
    assert exc.span.line == 5 and exc.span.column == 34  # at the width the body ends with: 16
    assert "adds its body's output (16x16x16, from conv (line 5)) to its input (16x16x8)" in exc.message
    assert "note: in template 'b', called at n.inc:6:1" in exc.format()
    exc = error("template b { residual { conv 3x3/2 8 } }\nb\n")
    assert "(8x8x8, from conv (line 5)) to its input (16x16x8)" in exc.message
    assert exc.span.column == 30  # at the stride: 3x3/2


def test_a_shortcut_missing_its_stride_is_reported_at_the_shortcut():
    """Not as the block's output added to its input (which would name the shortcut's shape as the
    input's), nor with a hint to add the shortcut that is there."""
    exc = error(
        "template b {\n residual {\n  conv 3x3/2 16\n  shortcut proj { conv 1x1 16; batchnorm }\n }\n}\nb\n"
    )
    assert "body's output (8x8x16, from conv (line 7))" in exc.message
    assert "its shortcut's output (16x16x16, from proj.0 (line 8))" in exc.message
    assert (exc.span.line, exc.span.column) == (8, 24)  # the shortcut's 1x1, where /2 is missing
    assert exc.hint == "give the shortcut the body's stride"


@pytest.mark.parametrize(
    "body, message",
    [
        ("template b { residual { shortcut: conv 1x1 8 } }\nb\n", "a residual needs a body"),
        (
            "template b { residual { conv 1x1 8; shortcut: conv 1x1 8; shortcut s: conv 1x1 8 } }\nb\n",
            "one shortcut",
        ),
        ("template b { shortcut: conv 1x1 8 }\nb\n", "a shortcut belongs inside a residual"),
        ("template b { residual scale=0 { conv 1x1 8 } }\nb\n", "scale must be positive"),
        ("template b { residual scale=2 glow { conv 1x1 8 } }\nb\n", "unknown name 'glow'"),
        ("residual { conv 1x1 8 }\n", "unexpected"),
    ],
)
def test_residual_mistakes(body, message):
    assert message in error(body).format()


def test_a_scale_given_by_a_template_argument_is_a_float_attribute():
    net = load("template b(s) { residual scale=s { conv 1x1 8 norelu } }\nb1: b 0.17\nb2: b 0.5\n")
    source = incdsl.compile_source(net)
    assert "def __init__(self, in_channels: int, s: float)" in source and "self.scale = s" in source
    assert "x = F.relu(out * self.scale + x, inplace=True)" in source
    model = incdsl.build_module(net)
    assert (model.b1.scale, model.b2.scale) == (0.17, 0.5)


def test_a_flag_argument_is_a_constructor_argument_not_a_second_class():
    net = load("template b(act) { residual relu=act { conv 1x1 8 norelu } }\nb1: b 1\nb2: b 0\nb3: b act=1\n")
    source = incdsl.compile_source(net)
    assert "class B(nn.Module)" in source and "class BNoAct" not in source  # timm's Block8(no_relu=)
    assert "def __init__(self, in_channels: int, act: bool)" in source
    assert "self.b1 = B(8, act=True)" in source and "self.b2 = B(8, act=False)" in source
    assert "x = out + x\n        if self.act:\n            x = F.relu(x, inplace=True)" in source
    model = incdsl.build_module(net).eval()
    x = -torch.ones(1, 8, 2, 2)  # the blocks' convs see a negative input: only a ReLU makes it 0
    with torch.no_grad():
        for block in (model.b1, model.b2, model.b3):
            block.conv.conv.weight.zero_()
    assert (model.b1.act, model.b2.act, model.b3.act) == (True, False, True)
    assert model.b1(x).eq(0).all() and model.b2(x).eq(-1).all()
    assert (
        "flag of template 'b': 0 or 1, not 2"
        in error("template b(act) { residual relu=act { conv 1x1 8 } }\nb 2\n").message
    )


def test_a_zero_column_drops_its_branch_and_shows_in_the_table():
    body = """
template m(n1x1 "#1x1", n3x3 "#3x3") {
    branch b1: conv 1x1 n1x1
    branch b3: conv 3x3 n3x3
}
a: m 4 4
b: m 0 6
"""
    net = load(body)
    model = incdsl.build_module(net)
    assert not hasattr(model.b, "b1") and model.b.b3.conv.out_channels == 6
    assert "class MNoN1x1(nn.Module)" in incdsl.compile_source(net)
    stats = incdsl.stats(net)
    assert stats.rows[1].columns == {"n1x1": 0, "n3x3": 6} and stats.titles == {
        "n1x1": "#1x1",
        "n3x3": "#3x3",
    }
    assert stats.rows[1].output == [6, 16, 16]


def test_a_zero_where_no_branch_can_drop_is_reported_at_the_call():
    exc = error("template m(c) { conv 1x1 c }\n\nm 0\n")
    assert (exc.span.line, exc.span.column) == (7, 3)
    assert "out must be a positive integer, not 0" in exc.message and "drops the branch" in exc.hint
    exc = error("template m(c) { branch a: conv 1x1 c; branch b: conv 3x3 c }\nm 0\n")
    assert "every branch of this group has 0 channels" in exc.message


def test_relu_rows_and_average_pools_that_exclude_their_padding():
    net = load("conv 3x3 8 norelu\nrelu\navgpool 3x3/1 pad=1 exclude_pad\nlinear classes\n")
    source = incdsl.compile_source(net)
    assert "self.relu = nn.ReLU()" in source and "count_include_pad=False" in source
    model = incdsl.build_module(net).eval()
    x = torch.randn(1, 8, 16, 16)
    pooled = model.avgpool(torch.ones(1, 1, 4, 4))
    assert torch.allclose(pooled, torch.ones(1, 1, 4, 4))  # the corners average 4 ones, not 4/9
    assert model(x).shape == (1, 4)


def test_a_sequential_group_is_keyed_by_position_and_labelled_by_name():
    body = """
template blk(c) { branch a: conv 1x1 c; branch b: conv 3x3 c }
sequential features {
    stem: conv 3x3 8
    2x blk 4
    mixed: blk 8
}
head: global_avgpool
fc: linear classes
template aux_head { global_avgpool; linear classes }
aux side after mixed weight=0.4: aux_head
"""
    net = load(body)
    model = incdsl.build_module(net)
    keys = list(model.state_dict())
    assert keys[0] == "features.0.conv.weight" and "features.3.b.conv.weight" in keys
    assert [s.name for s in net.stages][:4] == ["stem", "features.1", "features.2", "mixed"]
    source = incdsl.compile_source(net)
    assert "self.features = nn.Sequential(" in source and "x = self.features(x)" in source  # one module
    out = model.train()(torch.randn(2, 8, 16, 16))
    assert out.side.shape == (2, 4)
    inner = load(body.replace("aux side after mixed", "aux side after stem"))  # reads inside the group
    source = incdsl.compile_source(inner)
    assert "x = self.features[0](x)" in source and "x = self.features[3](x)" in source
    assert incdsl.build_module(inner).train()(torch.randn(2, 8, 16, 16)).side.shape == (2, 4)
    assert (
        "'features' is already used"
        in error(body.replace("head: global_avgpool", "features: global_avgpool")).message
    )


def test_stats_show_a_residual_rows_scale():
    stats = incdsl.stats("inception_resnet_v2")
    by_name = {row.name: row for row in stats.rows}
    assert by_name["repeat.0"].columns["scale"] == 0.17 and by_name["repeat_1.19"].columns["scale"] == 0.1
    assert by_name["block8"].columns["scale"] == 1.0 and by_name["block8"].type == "block8 (block8)"
    assert "scale" in incdsl.analysis.report.to_markdown(stats).splitlines()[2]


def test_bn_inception_shows_the_bn_papers_columns():
    stats = incdsl.stats("bn_inception")
    assert list(stats.titles.values()) == [
        "#1x1",
        "#3x3 reduce",
        "#3x3",
        "double #3x3 reduce",
        "double #3x3",
        "avg pool + proj",
        "max pool + proj",
    ]
    row = {r.name: r for r in stats.rows}["bn_reduction3c"]
    assert row.columns["n1x1"] == 0 and row.output == [576, 14, 14]


def test_draw_shows_the_shortcut_and_the_add():
    text = to_dot(incdsl.load("inception_resnet_v2"), "block")
    assert "<B>add x0.17, relu</B>" in text and "<B>add</B>" in text  # the last block8: no scale, no ReLU
    shortcut = [line for line in text.splitlines() if 'xlabel="shortcut"' in line]
    assert shortcut and all("-> " in line and "add@" in line for line in shortcut)
    net = load(RESNET)
    text = to_dot(net, "block")
    assert '"layer2.downsample" -> "layer2.add@' in text and '"layer1_1.add@' in text


def test_train_runs_on_bn_inception(tmp_path):
    from incdsl.train import make_config, train

    history = train(make_config({"target": "bn_inception", "data": "fake:4", "out": str(tmp_path / "run"),
                                 "epochs": 1, "batch_size": 2}))  # fmt: skip
    assert len(history) == 1 and history[0]["train_loss"] > 0
