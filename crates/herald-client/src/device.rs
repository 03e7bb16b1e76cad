//! Where the client keeps its device id between runs.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

/// Loads and saves the device id, so a restarted process keeps its device (and with it its
/// inbox cursor on the server).
pub trait DeviceStore: Send + Sync + 'static {
    /// The saved device id, if any.
    fn load(&self) -> io::Result<Option<String>>;
    /// Saves the device id the server confirmed or allocated.
    fn save(&self, device: &str) -> io::Result<()>;
}

/// Keeps the device id in the file `<dir>/herald-device`.
#[derive(Debug, Clone)]
pub struct FileDeviceStore {
    path: PathBuf,
}

impl FileDeviceStore {
    /// A store in `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileDeviceStore {
            path: dir.into().join("herald-device"),
        }
    }
}

impl DeviceStore for FileDeviceStore {
    fn load(&self) -> io::Result<Option<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&self, device: &str) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, device)?;
        std::fs::rename(tmp, &self.path)
    }
}

/// Keeps the device id in memory only (the default: a device per process lifetime), or a fixed
/// one given by the application.
#[derive(Debug, Default)]
pub struct MemoryDeviceStore {
    device: Mutex<Option<String>>,
}

impl MemoryDeviceStore {
    /// A store that starts with `device`.
    pub fn with(device: impl Into<String>) -> Self {
        MemoryDeviceStore {
            device: Mutex::new(Some(device.into())),
        }
    }
}

impl DeviceStore for MemoryDeviceStore {
    fn load(&self) -> io::Result<Option<String>> {
        Ok(self.device.lock().map(|d| d.clone()).unwrap_or(None))
    }

    fn save(&self, device: &str) -> io::Result<()> {
        if let Ok(mut d) = self.device.lock() {
            *d = Some(device.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileDeviceStore::new(dir.path().join("sub"));
        assert_eq!(s.load().unwrap(), None);
        s.save("d_123").unwrap();
        assert_eq!(
            FileDeviceStore::new(dir.path().join("sub"))
                .load()
                .unwrap()
                .as_deref(),
            Some("d_123")
        );
    }
}
