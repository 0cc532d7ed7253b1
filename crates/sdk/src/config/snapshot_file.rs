//! The watcher's snapshot file: the values of one namespace-environment, written atomically
//! with mode 0600, read back when Capstan is unreachable at start.

use std::path::{Path, PathBuf};

use capstan_proto::config::ConfigSnapshot;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The snapshot file: the values and which namespace-environment they are of.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotFile {
    pub(super) namespace: String,
    pub(super) environment: String,
    pub(super) snapshot: ConfigSnapshot,
}

pub(super) async fn load_snapshot_file(
    path: &Path,
    ns: &str,
    env: &str,
) -> Result<Option<ConfigSnapshot>, Error> {
    let p = path.to_owned();
    let text = match tokio::task::spawn_blocking(move || std::fs::read(&p)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Ok(Err(e)) => return Err(file_error(path, e)),
        Err(e) => return Err(file_error(path, e)),
    };
    let f: SnapshotFile = serde_json::from_slice(&text).map_err(|e| file_error(path, e))?;
    if f.namespace != ns || f.environment != env {
        return Err(file_error(
            path,
            format!("holds {}/{}, not {ns}/{env}", f.namespace, f.environment),
        ));
    }
    Ok(Some(f.snapshot))
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// Writes `f` to `path` through a temporary file and a rename, so a reader (or a crash) sees
/// the old file or the new one, never half of one; mode 0600 from creation.
pub(super) fn write_snapshot_file(path: &Path, f: &SnapshotFile) -> Result<(), Error> {
    use std::io::Write;
    let bytes = serde_json::to_vec(f).map_err(|e| file_error(path, e))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| file_error(&dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let written = o.open(&tmp).and_then(|mut file| {
        file.write_all(&bytes)?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(file_error(path, e));
    }
    // The rename itself is durable once the directory is synced.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(revision: i64, values: serde_json::Value) -> ConfigSnapshot {
        serde_json::from_value(json!({"revision": revision, "values": values})).unwrap()
    }

    #[tokio::test]
    async fn the_snapshot_file_round_trips_with_mode_0600_and_names_its_environment() {
        let dir = std::env::temp_dir().join(format!("capstan-sdk-snap-{}", std::process::id()));
        let path = dir.join("sub").join("config.json");
        let f = SnapshotFile {
            namespace: "payments".into(),
            environment: "prod".into(),
            snapshot: snap(7, json!({"a": {"b": [1, 2]}})),
        };
        write_snapshot_file(&path, &f).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let got = load_snapshot_file(&path, "payments", "prod").await.unwrap();
        assert_eq!(got, Some(f.snapshot.clone()));
        assert!(load_snapshot_file(&path, "payments", "staging")
            .await
            .is_err());
        assert_eq!(
            load_snapshot_file(&dir.join("none"), "payments", "prod")
                .await
                .unwrap(),
            None
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
