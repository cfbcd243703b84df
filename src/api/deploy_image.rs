//! The image of a deployment as the controller serves it: what `BootImages` verified of the
//! image's `root` file (its size and SHA-256) and the format the fleet file gives. The one place
//! that reads it for the deployment JSON (`deploy_image_for`): the image set of the images
//! branch (DeployImage with raw_size/raw_sha256) replaces its inside.

use crate::boot::http::BootImages;
use crate::config::Fleet;
use crate::services::machine_api::deployment::DeployImage;

/// The deploy action's image (`machines.image`) as the controller serves it at `base_url`, or
/// why it cannot be deployed (the failed_deployment reason).
pub fn deploy_image_for(
    images: Option<&BootImages>,
    fleet: Option<&Fleet>,
    image: Option<&str>,
    base_url: &str,
) -> Result<DeployImage, String> {
    let name = image.ok_or(
        "the machine has no image to deploy: give it one (`image` in the fleet file, or deploy \
         with an image)",
    )?;
    let root = fleet
        .and_then(|fleet| fleet.images.get(name))
        .and_then(|image| image.root.as_ref())
        .ok_or_else(|| {
            format!(
                "image `{name}` has no root image in the controller's fleet file \
                 ([images.{name}.root]): nothing to write to the disk"
            )
        })?;
    let format = serde_json::to_value(root.format)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_default();
    if !(format.starts_with("raw") || format.starts_with("t")) {
        return Err(format!(
            "image `{name}` is {format}: the controller cannot serve it for deployment yet \
             (use a root tarball or a raw disk image)"
        ));
    }
    let verified = images
        .and_then(|images| images.file(name, "root"))
        .ok_or_else(|| {
            format!(
                "image `{name}`: the controller has no verified root file to serve (see its \
                 start-up log for the image errors)"
            )
        })?;
    let raw = format == "raw";
    Ok(DeployImage {
        name: name.to_string(),
        format,
        url: format!("{base_url}/boot/files/{name}/root"),
        size: verified.size,
        sha256: verified.sha256.clone(),
        raw_size: raw.then_some(verified.size),
        raw_sha256: raw.then(|| verified.sha256.clone()),
    })
}
