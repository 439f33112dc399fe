//! Reading config from disk: single files, directories, Kubernetes ConfigMap mounts.

use crate::config::{load_path, Match};
use std::fs;
use std::path::Path;

fn write(dir: &Path, name: &str, contents: &str) {
    fs::write(dir.join(name), contents).expect("write test file");
}

const A: &str =
    "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n";
const B: &str =
    "domain: b\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 2}\n";

#[test]
fn single_file_path_loads_that_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", A);
    let (config, files) = load_path(&dir.path().join("a.yaml")).unwrap();
    assert_eq!(files.len(), 1);
    assert!(matches!(config.lookup("a", [("k", "v")]), Match::Rule(_)));
}

#[test]
fn directory_loads_every_yaml_file_in_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", A);
    write(dir.path(), "b.yml", B);
    write(dir.path(), "notes.txt", "not yaml");
    write(dir.path(), ".hidden.yaml", "domain: hidden\n");
    let (config, files) = load_path(dir.path()).unwrap();
    assert_eq!(config.domains().collect::<Vec<_>>(), ["a", "b"]);
    let names: Vec<_> = files
        .iter()
        .map(|(name, _)| Path::new(name).file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["a.yaml", "b.yml"]);
}

#[test]
fn directory_subdirectories_are_not_descended() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", A);
    fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    write(&dir.path().join("sub.yaml"), "b.yaml", B);
    let (config, _) = load_path(dir.path()).unwrap();
    assert_eq!(config.domains().collect::<Vec<_>>(), ["a"]);
}

#[cfg(unix)]
#[test]
fn configmap_mount_with_hidden_data_dir_and_symlinks_loads_each_file_once() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // What the kubelet writes: a timestamped dir, `..data` -> it, visible names -> `..data/x`.
    let versioned = root.join("..2024_01_01_00_00_00.000000001");
    fs::create_dir(&versioned).unwrap();
    write(&versioned, "a.yaml", A);
    write(&versioned, "b.yaml", B);
    symlink("..2024_01_01_00_00_00.000000001", root.join("..data")).unwrap();
    symlink("..data/a.yaml", root.join("a.yaml")).unwrap();
    symlink("..data/b.yaml", root.join("b.yaml")).unwrap();

    let (config, files) = load_path(root).unwrap();
    assert_eq!(config.domains().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(files.len(), 2);
}

#[test]
fn missing_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let errs = load_path(&missing).expect_err("missing path must fail");
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].file, missing.display().to_string());
    assert!(
        errs.0[0].message.starts_with("cannot read config"),
        "{errs}"
    );
}

#[cfg(unix)]
#[test]
fn dangling_symlink_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", A);
    std::os::unix::fs::symlink("gone.yaml", dir.path().join("b.yaml")).unwrap();
    let errs = load_path(dir.path()).expect_err("dangling link must fail");
    assert!(errs.0[0].file.ends_with("b.yaml"), "{errs}");
}

#[test]
fn invalid_file_in_a_directory_is_named_by_its_path() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", A);
    write(dir.path(), "bad.yaml", "domain: \"\"\n");
    let errs = load_path(dir.path()).expect_err("bad file must fail");
    assert_eq!(errs.0.len(), 1);
    assert!(errs.0[0].file.ends_with("bad.yaml"), "{errs}");
}
