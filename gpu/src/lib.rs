//! Device layer of Invariant.
//!
//! Discovers the devices this process can run models on and decides, for each model version,
//! which one it runs on. Engines receive the decision ([`Placement`]) and never probe
//! hardware themselves, so accelerator support can be added here without touching them.
//! This build places every version on the CPU; a manifest that insists on CUDA is refused
//! with a clear reason rather than silently run elsewhere.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// A device a model version can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The host CPU.
    Cpu,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
        }
    }
}

/// What a manifest asks for (`[inference] device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRequest {
    /// Let the device layer choose (the default).
    #[default]
    Auto,
    /// The CPU, always.
    Cpu,
    /// A CUDA GPU; refused when none is available.
    Cuda,
}

/// The device layer's decision for one model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Where the version runs.
    pub device: Device,
    /// Why: shown in model metadata.
    pub reason: String,
}

/// A placement that cannot be honoured.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// The manifest requires a device this process does not have.
    #[error("device '{requested}' requested but not available: {why}")]
    Unavailable {
        /// The requested device.
        requested: String,
        /// Why it is not available.
        why: String,
    },
}

/// The devices found at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceLayer {
    devices: Vec<Device>,
}

impl DeviceLayer {
    /// Discovers the devices of this process. This build knows the CPU only.
    pub fn discover() -> Self {
        Self {
            devices: vec![Device::Cpu],
        }
    }

    /// The devices found, in a fixed order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Decides where a model version runs.
    pub fn place(&self, request: DeviceRequest) -> Result<Placement, DeviceError> {
        match request {
            DeviceRequest::Auto => Ok(Placement {
                device: Device::Cpu,
                reason: "auto: no accelerator in this build".into(),
            }),
            DeviceRequest::Cpu => Ok(Placement {
                device: Device::Cpu,
                reason: "manifest requests cpu".into(),
            }),
            DeviceRequest::Cuda => Err(DeviceError::Unavailable {
                requested: "cuda".into(),
                why: "this build of invariant has no CUDA support".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_and_cpu_place_on_cpu() {
        let layer = DeviceLayer::discover();
        assert_eq!(layer.devices(), &[Device::Cpu]);
        assert_eq!(layer.place(DeviceRequest::Auto).unwrap().device, Device::Cpu);
        assert_eq!(layer.place(DeviceRequest::Cpu).unwrap().device, Device::Cpu);
    }

    #[test]
    fn cuda_is_refused_with_reason() {
        let err = DeviceLayer::discover().place(DeviceRequest::Cuda).unwrap_err();
        assert!(err.to_string().contains("cuda"), "{err}");
    }
}
