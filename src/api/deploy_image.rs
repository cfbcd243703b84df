//! The image of a deployment as the controller serves it: the image set's `DeployImage` (the
//! bytes served and their SHA-256, the decompressed stream's size and SHA-256, the format as
//! served: qcow2 is converted to raw). The one place that reads it for the deployment JSON
//! (`deploy_image_for`).

use crate::boot::http::BootImages;
use crate::config::Fleet;
use crate::model::MacAddr;
use crate::services::machine_api::deployment::DeployImage;

/// The deploy action's image (`machines.image`) as the controller serves it at `base_url`, or
/// why it cannot be deployed (the failed_deployment reason). With the machine's boot MAC the URL
/// names it (`/boot/by-mac/MAC/IMAGE/root`), so the transfer is recorded as the machine's.
pub fn deploy_image_for(
    images: Option<&BootImages>,
    fleet: Option<&Fleet>,
    image: Option<&str>,
    base_url: &str,
    boot_mac: Option<MacAddr>,
) -> Result<DeployImage, String> {
    let name = image.ok_or(
        "the machine has no image to deploy: give it one (`image` in the fleet file, or deploy \
         with an image)",
    )?;
    fleet
        .and_then(|fleet| fleet.images.get(name))
        .and_then(|image| image.root.as_ref())
        .ok_or_else(|| {
            format!(
                "image `{name}` has no root image in the controller's fleet file \
                 ([images.{name}.root]): nothing to write to the disk"
            )
        })?;
    let served = images
        .ok_or_else(|| {
            format!("image `{name}`: the controller serves no images (it has no boot listener)")
        })?
        .deploy_image(name)
        .map_err(|error| error.to_string())?;
    let format = serde_json::to_value(served.format)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default();
    Ok(DeployImage {
        name: name.to_string(),
        format,
        url: match boot_mac {
            Some(mac) => format!(
                "{base_url}{}",
                served
                    .url_path
                    .replacen("/boot/files/", &format!("/boot/by-mac/{mac}/"), 1)
            ),
            None => format!("{base_url}{}", served.url_path),
        },
        size: served.size,
        sha256: served.sha256,
        raw_size: Some(served.raw_size),
        raw_sha256: Some(served.raw_sha256),
    })
}
