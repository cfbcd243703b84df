//! `[profiles.NAME]`: storage template + network template + image + arch + tags + expected
//! hardware, shared by the machines that name the profile.

use super::{expectations, images::arch, reference, tags, Reference};
use crate::config::diagnostics::Problems;
use crate::config::model::Profile;
use crate::config::read::{Spanned, TableReader};

pub const KEYS: &[&str] = &["storage", "network", "image", "arch", "tags", "expect"];

#[derive(Debug)]
pub struct ProfileDecl {
    pub name: Spanned<String>,
    pub profile: Profile,
    pub storage: Option<Reference>,
    pub network: Option<Reference>,
    pub image: Option<Reference>,
}

pub fn read(
    name: Spanned<String>,
    reader: TableReader<'_, '_>,
    problems: &mut Problems,
) -> ProfileDecl {
    reader.check_keys(KEYS, problems);
    let storage = reference(&reader, "storage", problems);
    let network = reference(&reader, "network", problems);
    let image = reference(&reader, "image", problems);
    let profile = Profile {
        name: name.value.clone(),
        storage: storage.as_ref().map(|storage| storage.value.clone()),
        network: network.as_ref().map(|network| network.value.clone()),
        image: image.as_ref().map(|image| image.value.clone()),
        arch: arch(&reader, "arch", problems),
        tags: tags(&reader, problems),
        expect: expectations(&reader, problems),
    };
    ProfileDecl {
        name,
        profile,
        storage,
        network,
        image,
    }
}
