"""Every row of GoogLeNet's Table 1, computed here from first principles and compared with incdsl.

The expected numbers come from the layer shapes alone (conv params = k*k*in*out + out biases; MACs =
k*k*in*out*H*W), written out below without using incdsl, so they cannot agree with it by accident.
"""

import pytest

import incdsl

# The paper's Table 1: (label, input channels, spatial size, the six columns, output channels).
INCEPTION = [
    ("3a", 192, 28, (64, 96, 128, 16, 32, 32), 256),
    ("3b", 256, 28, (128, 128, 192, 32, 96, 64), 480),
    ("4a", 480, 14, (192, 96, 208, 16, 48, 64), 512),
    ("4b", 512, 14, (160, 112, 224, 24, 64, 64), 512),
    ("4c", 512, 14, (128, 128, 256, 24, 64, 64), 512),
    ("4d", 512, 14, (112, 144, 288, 32, 64, 64), 528),
    ("4e", 528, 14, (256, 160, 320, 32, 128, 128), 832),
    ("5a", 832, 7, (256, 160, 320, 32, 128, 128), 832),
    ("5b", 832, 7, (384, 192, 384, 48, 128, 128), 1024),
]


def conv(k, cin, cout, hw):
    """(params with bias, MACs) of a k x k convolution producing hw x hw."""
    return k * k * cin * cout + cout, k * k * cin * cout * hw * hw


def inception(cin, hw, cols):
    n1, r3, n3, r5, n5, pp = cols
    parts = [conv(1, cin, n1, hw), conv(1, cin, r3, hw), conv(3, r3, n3, hw)]
    parts += [conv(1, cin, r5, hw), conv(5, r5, n5, hw), conv(1, cin, pp, hw)]
    return sum(p for p, _ in parts), sum(m for _, m in parts)


@pytest.fixture(scope="module")
def rows():
    return {r.name: r for r in incdsl.stats("googlenet").rows}


def test_stem_rows(rows):
    assert (rows["conv1"].params, rows["conv1"].macs) == conv(7, 3, 64, 112)
    assert (rows["conv2"].params, rows["conv2"].macs) == conv(1, 64, 64, 56)
    assert (rows["conv3"].params, rows["conv3"].macs) == conv(3, 64, 192, 56)
    assert rows["conv1"].output == [64, 112, 112]
    assert rows["pool2"].output == [192, 28, 28]  # 56 -> 28 with ceil mode, as Caffe


@pytest.mark.parametrize("label, cin, hw, cols, cout", INCEPTION, ids=[r[0] for r in INCEPTION])
def test_inception_rows(rows, label, cin, hw, cols, cout):
    row = rows[f"inception{label}"]
    assert (row.params, row.macs) == inception(cin, hw, cols)
    assert row.input == [cin, hw, hw]
    assert row.output == [cout, hw, hw]
    assert tuple(row.columns.values()) == cols
    assert row.depth == 2
    assert row.type == f"inception ({label})"


def test_classifier_and_pools(rows):
    assert (rows["fc"].params, rows["fc"].macs) == (1024 * 1000 + 1000, 1024 * 1000)
    assert rows["pool3"].output == [480, 14, 14]
    assert rows["pool4"].output == [832, 7, 7]
    assert rows["pool5"].output == [1024, 1, 1]
    assert all(rows[n].params == rows[n].macs == 0 for n in ("pool1", "norm1", "dropout", "softmax"))


def test_totals_match_the_faithful_count():
    """6,998,552 params and 1,582,671,872 MACs (shared/reference; Caffe's BVLC model agrees)."""
    stats = incdsl.stats("googlenet")
    stem = [conv(7, 3, 64, 112), conv(1, 64, 64, 56), conv(3, 64, 192, 56)]
    modules = [inception(cin, hw, cols) for _, cin, hw, cols, _ in INCEPTION]
    fc = (1024 * 1000 + 1000, 1024 * 1000)
    expected = [sum(x) for x in zip(*stem, *modules, fc)]
    assert expected == [6_998_552, 1_582_671_872]
    assert (stats.params, stats.macs) == (6_998_552, 1_582_671_872)


def test_aux_heads_are_listed_apart():
    aux = {a.name: a for a in incdsl.stats("googlenet").aux}
    # avgpool 5x5/3 on 14x14 gives 4x4; conv 1x1 128; fc 2048 -> 1024; fc 1024 -> 1000
    for name, cin in (("aux1", 512), ("aux2", 528)):
        params = (cin * 128 + 128) + (2048 * 1024 + 1024) + (1024 * 1000 + 1000)
        macs = cin * 128 * 16 + 2048 * 1024 + 1024 * 1000
        assert (aux[name].params, aux[name].macs, aux[name].weight) == (params, macs, 0.3)
