//! `[profiles.NAME]`: storage template + network template + image + arch + tags + expected
//! hardware + deployment settings, shared by the machines that name the profile. A profile may
//! extend one other (`extends`); the chains are checked and flattened in `check`.

use super::{deploy, expectations, images::arch, reference, tags, Reference};
use crate::config::diagnostics::Problems;
use crate::config::model::Profile;
use crate::config::read::{Spanned, TableReader};
use std::path::Path;
use std::sync::Arc;

pub const KEYS: &[&str] = &[
    "extends",
    "storage",
    "network",
    "image",
    "arch",
    "tags",
    "expect",
    "kernel_params",
    "ephemeral_kernel_params",
    "ssh_keys",
    "user_data",
    "vendor_data",
];

#[derive(Debug)]
pub struct ProfileDecl {
    pub name: Spanned<String>,
    /// Its own values until `check` flattens the chain of `extends` into it.
    pub profile: Profile,
    pub extends: Option<Reference>,
    pub storage: Option<Reference>,
    pub network: Option<Reference>,
    pub image: Option<Reference>,
}

pub fn read(
    name: Spanned<String>,
    reader: TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> ProfileDecl {
    reader.check_keys(KEYS, problems);
    let extends = reference(&reader, "extends", problems);
    let storage = reference(&reader, "storage", problems);
    let network = reference(&reader, "network", problems);
    let image = reference(&reader, "image", problems);
    let profile = Profile {
        name: name.value.clone(),
        extends: extends.as_ref().map(|extends| extends.value.clone()),
        storage: storage.as_ref().map(|storage| storage.value.clone()),
        network: network.as_ref().map(|network| network.value.clone()),
        image: image.as_ref().map(|image| image.value.clone()),
        arch: arch(&reader, "arch", problems),
        tags: tags(&reader, problems),
        expect: expectations(&reader, problems),
        deploy: Arc::new(deploy::read(&reader, base_dir, problems)),
    };
    ProfileDecl {
        name,
        profile,
        extends,
        storage,
        network,
        image,
    }
}
