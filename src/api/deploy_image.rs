//! The image of a deployment as the controller serves it: the image set's `DeployImage` (the
//! bytes served and their SHA-256, the decompressed stream's size and SHA-256, the format as
//! served: qcow2 is converted to raw). The one place that reads it for the deployment JSON
//! (`deploy_image_for`), and the wait of a deployment whose image this controller is still
//! fetching (`wait_while_on_its_way`).

use crate::boot::http::BootImages;
use crate::boot::images::ImageUnavailable;
use crate::config::Fleet;
use crate::model::MacAddr;
use crate::services::machine_api::deployment::DeployImage;
use std::time::Duration;

/// How long one deployment fetch waits for an image this controller is still fetching: below
/// the runner's HTTP timeout (60 s); the runner asks again after a 5xx (three more times).
pub const IMAGE_WAIT: Duration = Duration::from_secs(25);
/// How often the wait looks at the image again.
const IMAGE_LOOK: Duration = Duration::from_millis(200);

/// Waits while image `name`'s root is on its way to this controller (downloading from its URL
/// or from another controller, or having its digests checked), at most `limit`. A controller
/// that became the leader, or a controller serving a machine another one started, may be asked
/// for an image it has not finished fetching: the machine waits for it instead of its
/// deployment failing. Returns why the image is still not there after `limit` (only ever on its
/// way); `None` once it is ready, or when it cannot come (then `deploy_image_for` says why).
pub async fn wait_while_on_its_way(
    images: &BootImages,
    name: &str,
    limit: Duration,
) -> Option<ImageUnavailable> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match images.deploy_image(name) {
            Err(
                on_its_way @ (ImageUnavailable::Downloading { .. }
                | ImageUnavailable::Checking { .. }),
            ) => {
                if tokio::time::Instant::now() >= deadline {
                    return Some(on_its_way);
                }
            }
            _ => return None,
        }
        tokio::time::sleep(IMAGE_LOOK).await;
    }
}

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
