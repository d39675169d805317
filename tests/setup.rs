//! Set-up checks (issue: workspace foundation): libtorch loads and computes on the chosen device, and every
//! zoo checkpoint has exactly the tensors its config implies. Fails if `make models` has not run, unless
//! `ROSETTA_SKIP_ZOO_TESTS=1`.

use anyhow::{bail, Result};
use rosetta::hooks::model::expected_tensors;
use rosetta::hooks::{default_device, libtorch_info, zoo, ArchSpec, SafetensorsSet};
use tch::{Kind, Tensor};

#[test]
fn libtorch_computes_on_the_chosen_device() -> Result<()> {
    let info = libtorch_info();
    assert!(
        info.version.starts_with("2.13.0"),
        "tch 0.26 needs libtorch 2.13.0, linked {}",
        info.version
    );
    let device = default_device()?;
    let a = Tensor::randn([128, 128], (Kind::Double, device));
    let eye = a.matmul(&a.inverse());
    let err = (eye - Tensor::eye(128, (Kind::Double, device)))
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 1e-8, "A @ inv(A) deviates from I by {err}");
    assert_eq!(a.device(), device);
    Ok(())
}

#[test]
fn zoo_checkpoints_have_the_tensors_their_configs_imply() -> Result<()> {
    let skip = std::env::var("ROSETTA_SKIP_ZOO_TESTS").is_ok_and(|v| v == "1");
    for (name, entry) in zoo::inventory()? {
        let Some(entry) = entry else {
            if skip {
                eprintln!("skipping {name}: not fetched");
                continue;
            }
            bail!(
                "zoo model {name} missing from {} (run `make models`)",
                zoo::zoo_dir().display()
            );
        };
        entry.check_sizes()?;
        let spec = ArchSpec::from_file(&entry.dir.join("config.json"))?;
        assert_eq!(spec.model_type, entry.record.model_type, "{name}");
        let weights = SafetensorsSet::open_checkpoint(&entry.dir)?;
        let mut expected = expected_tensors(&spec);
        if !spec.tie_word_embeddings {
            expected.push((
                "lm_head.weight".into(),
                vec![spec.vocab_size, spec.hidden_size],
            ));
        }
        for (tensor, shape) in &expected {
            let meta = weights
                .meta(tensor)
                .unwrap_or_else(|| panic!("{name}: {tensor} missing"));
            assert_eq!(&meta.shape, shape, "{name}: {tensor}");
            assert_eq!(meta.dtype, "F32", "{name}: {tensor} (the zoo stores f32)");
        }
        assert_eq!(
            weights.names().len(),
            expected.len(),
            "{name}: unexpected extra tensors"
        );
        for file in ["tokenizer.json", "tokenizer_config.json", "config.json"] {
            assert!(entry.dir.join(file).exists(), "{name}: {file} missing");
        }
        println!(
            "{name}: {} tensors match {} ({} layers)",
            expected.len(),
            spec.model_type,
            spec.num_layers
        );
    }
    Ok(())
}
