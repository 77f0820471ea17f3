//! The cfg parser, the weights reader and the network on a small cfg.

use super::*;

const CFG: &str = "[net]\nwidth=64\nheight=32\nchannels=3\n\n[convolutional]\nbatch_normalize=1\n\
    filters=4\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n[maxpool]\nsize=2\nstride=2\n\n\
    [convolutional]\nfilters=12\nsize=1\nstride=1\npad=1\nactivation=linear\n\n[region]\n\
    anchors = 1,2, 3,4\nclasses=1\ncoords=4\nnum=2\n";

#[test]
fn a_cfg_parses_into_layers_and_tensor_layout() {
    let cfg = Cfg::parse(CFG).expect("parses");
    assert_eq!(cfg.input_size, (32, 64));
    assert_eq!(cfg.layers.len(), 4);
    let layout = cfg.tensor_layout();
    let names: Vec<&str> = layout.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "layers.0.bn.bias",
            "layers.0.bn.weight",
            "layers.0.bn.running_mean",
            "layers.0.bn.running_var",
            "layers.0.conv.weight",
            "layers.2.conv.bias",
            "layers.2.conv.weight"
        ]
    );
    assert_eq!(layout[6].1, vec![12, 4, 1, 1]);
}

#[test]
fn weights_of_the_wrong_length_are_errors() {
    let cfg = Cfg::parse(CFG).expect("parses");
    let floats: usize = cfg
        .tensor_layout()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let mut bytes = Vec::new();
    for v in [0i32, 2, 0] {
        bytes.extend(v.to_le_bytes());
    }
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(std::iter::repeat_n(0u8, floats * 4));
    let w = weights_from_bytes(&cfg, &bytes).expect("exact size loads");
    assert!(Darknet::load(&cfg, &w).is_ok());
    let short = weights_from_bytes(&cfg, &bytes[..bytes.len() - 1]).expect_err("short");
    assert!(short.to_string().contains("truncated"), "{short}");
    bytes.push(0);
    let long = weights_from_bytes(&cfg, &bytes).expect_err("long");
    assert!(long.to_string().contains("left over"), "{long}");
    assert!(weights_from_bytes(&cfg, &bytes[..10]).is_err());
}

#[test]
fn unsupported_cfgs_are_refused_with_the_reason() {
    let e = Cfg::parse("[net]\nwidth=8\nheight=8\n[yolo]\n").expect_err("refused");
    assert!(e.to_string().contains("[yolo]"), "{e}");
    assert!(Cfg::parse("[convolutional]\n").is_err());
}
