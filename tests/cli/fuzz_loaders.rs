//! Property runs over the two parsers a user's files reach: the IDX reader and the checkpoint (safetensors) loader.
//! Arbitrary and mutated inputs must give an error or a value, never a panic, and a header that claims more data
//! than the file holds must be refused before anything that size is allocated.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

use diffuse::data::parse_idx;
use diffuse::io::tensor_file;

/// A valid IDX file of u8 values with the given dims.
fn idx_file(dims: &[u32]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    let n: usize = dims.iter().map(|&d| d as usize).product();
    bytes.extend((0..n).map(|i| i as u8));
    bytes
}

fn safetensors_file() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.safetensors");
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "a.weight".to_string(),
        Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]),
    );
    tensors.insert("b.bias".to_string(), Tensor::arange(5, (Kind::Float, Device::Cpu)));
    tensor_file::write(&path, &tensors).expect("write");
    std::fs::read(&path).expect("read")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn idx_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse_idx(&bytes);
    }

    #[test]
    fn idx_parser_survives_mutations_and_round_trips_the_rest(
        dims in proptest::collection::vec(1u32..6, 1..4),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
    ) {
        let good = idx_file(&dims);
        let parsed = parse_idx(&good).expect("valid file parses");
        prop_assert_eq!(parsed.dims, dims.iter().map(|&d| d as usize).collect::<Vec<_>>());
        let mut bad = good.clone();
        for (at, value) in flips {
            let i = at % bad.len();
            bad[i] = value;
        }
        bad.truncate(cut % (bad.len() + 1));
        if let Ok(array) = parse_idx(&bad) {
            // Whatever parses must be self-consistent.
            prop_assert_eq!(array.data.len(), array.dims.iter().product::<usize>());
        }
    }

    #[test]
    fn huge_claimed_dims_are_refused_without_allocating(dims in proptest::collection::vec(1u32.., 1..4)) {
        let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
        for d in &dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(&[0; 16]);
        let claimed: u128 = dims.iter().map(|&d| d as u128).product();
        if claimed != 16 {
            prop_assert!(parse_idx(&bytes).is_err());
        }
    }

    #[test]
    fn checkpoint_loader_never_panics_on_mutated_files(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut bytes = safetensors_file();
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, &bytes).expect("write");
        let _ = tensor_file::read(&path);
    }
}
