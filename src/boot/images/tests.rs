use super::*;
use crate::config::{Arch, Artifact, RootImage};

fn image(name: &str, kernel: Option<Artifact>, root: Option<RootImage>) -> BTreeMap<String, Image> {
    let image = Image {
        name: name.into(),
        arch: Arch::Amd64,
        os: None,
        release: None,
        initrd: kernel.clone(),
        kernel,
        root,
    };
    BTreeMap::from([(name.to_string(), image)])
}

fn at(path: &Path, sha256: Option<&str>) -> Artifact {
    Artifact {
        location: ArtifactLocation::Path(path.to_path_buf()),
        sha256: sha256.map(String::from),
    }
}

#[test]
fn a_checksum_mismatch_names_image_file_and_both_digests() {
    let file = tempfile::NamedTempFile::new().expect("a file");
    std::fs::write(file.path(), b"kernel bytes").expect("written");
    let wrong = "00".repeat(32);
    let images = image("ephemeral", Some(at(file.path(), Some(&wrong))), None);
    let (loaded, errors) = BootImages::load(&images, None);
    assert!(loaded.file("ephemeral", "kernel").is_none());
    let message = errors[0].to_string();
    let (actual, _) = sha256_of_file(file.path()).expect("hashed");
    for part in [
        "`ephemeral`",
        "kernel",
        &wrong,
        &actual,
        &file.path().display().to_string(),
    ] {
        assert!(message.contains(part), "{message} lacks {part}");
    }
    let upper = actual.to_uppercase();
    let images = image("ephemeral", Some(at(file.path(), Some(&upper))), None);
    let (loaded, errors) = BootImages::load(&images, None);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(loaded.file("ephemeral", "kernel").map(|f| f.size), Some(12));
}

#[test]
fn a_file_changed_after_its_check_is_refused_until_the_next_load() {
    let directory = tempfile::tempdir().expect("a directory");
    let path = directory.path().join("disk.img");
    std::fs::write(&path, vec![1u8; 4096]).expect("written");
    let root = RootImage {
        location: ArtifactLocation::Path(path.clone()),
        sha256: None,
        format: ImageFormat::Raw,
    };
    let images = image("disk", None, Some(root));
    let cache = ImageCache::in_state_dir(directory.path());
    let (loaded, errors) = BootImages::load(&images, Some(cache));
    assert!(errors.is_empty(), "{errors:?}");
    let deploy = loaded.deploy_image("disk").expect("ready");
    assert_eq!((deploy.size, deploy.raw_size), (4096, 4096));
    assert_eq!(deploy.format, ImageFormat::Raw);
    assert_eq!(deploy.url_path, "/boot/files/disk/root");
    std::fs::write(&path, vec![2u8; 4097]).expect("rewritten");
    let refused = loaded.deploy_image("disk").expect_err("changed");
    assert!(
        matches!(refused, ImageUnavailable::Changed { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("changed on disk"), "{refused}");
    assert_eq!(loaded.list()[0].state, "changed");
    assert!(matches!(
        loaded.deploy_image("nope"),
        Err(ImageUnavailable::Unknown(_))
    ));
}
