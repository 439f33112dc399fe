//! Reading config files from disk: one file, or every YAML file of a directory.
//!
//! Directories are read the way Kubernetes mounts a ConfigMap: the visible `*.yaml` entries are
//! symlinks into a hidden `..2024_..` directory that `..data` points at, and an update swaps that
//! link. So symlinks are followed, and names starting with `.` are skipped (otherwise each file
//! would be seen twice, or the hidden directory's stale copies read).

use super::error::{ConfigError, ConfigErrors};
use super::RateLimitConfig;
use std::fs;
use std::path::Path;

/// Loads `path` (a YAML file, or a directory of them) and returns the config with the
/// `(file name, contents)` pairs it was built from, file names being full paths sorted by name.
pub fn load_path(path: &Path) -> Result<(RateLimitConfig, Vec<(String, String)>), ConfigErrors> {
    let files = read_path(path)?;
    let config = RateLimitConfig::from_files(&files)?;
    Ok((config, files))
}

/// Reads the files `load_path` would load, without parsing them: hot reload compares contents
/// first, so an unchanged config is neither parsed again nor reported again.
pub fn read_path(path: &Path) -> Result<Vec<(String, String)>, ConfigErrors> {
    let shown = path.display().to_string();
    let fail = |err: std::io::Error| {
        ConfigErrors(vec![ConfigError::new(
            &shown,
            format!("cannot read config: {err}"),
        )])
    };
    // `metadata` follows symlinks, so a link to a directory is read as that directory.
    if !fs::metadata(path).map_err(fail)?.is_dir() {
        let contents = fs::read_to_string(path).map_err(fail)?;
        return Ok(vec![(shown, contents)]);
    }

    let mut paths = Vec::new();
    for entry in fs::read_dir(path).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let file = entry.path();
        match fs::metadata(&file) {
            // A directory named `x.yaml` is not a config file.
            Ok(meta) if !meta.is_file() => {}
            // A dangling symlink (say, mid-swap) is kept: reading it reports the problem.
            _ => paths.push(file),
        }
    }
    paths.sort();

    let mut files = Vec::new();
    let mut errors = Vec::new();
    for file in paths {
        let shown = file.display().to_string();
        match fs::read_to_string(&file) {
            Ok(contents) => files.push((shown, contents)),
            Err(err) => errors.push(ConfigError::new(
                &shown,
                format!("cannot read config: {err}"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(ConfigErrors(errors))
    }
}
