//! The profile file of Tencent's SDKs and CLI: INI, keys `secret_id` / `secret_key` in the
//! `[default]` section. Where: `TENCENTCLOUD_CREDENTIALS_FILE` when set (the Go SDK's variable;
//! set but empty is an error, as there), else `~/.tencentcloud/credentials` (`$HOME`), else
//! `/etc/tencentcloud/credentials` (the Python SDK's second place). A file that is there but
//! unusable stops the start (the Go SDK's rule: the operator meant it), naming the file.

use super::file::read_limited;
use super::keys::CredentialError;
use crate::ci::sign::Credentials;
use crate::secret::Secret;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The variable naming the profile file.
pub const PATH_VAR: &str = "TENCENTCLOUD_CREDENTIALS_FILE";
/// The system-wide place, after the home directory's.
const SYSTEM_PATH: &str = "/etc/tencentcloud/credentials";

/// The profile file to read, if there is one.
pub(super) fn locate(vars: &HashMap<String, String>) -> Result<Option<PathBuf>, CredentialError> {
    if let Some(path) = vars.get(PATH_VAR) {
        if path.trim().is_empty() {
            return Err(CredentialError::Profile {
                path: format!("{PATH_VAR}=\"\""),
                reason: "set but empty: name the profile file, or unset the variable".into(),
            });
        }
        return Ok(Some(PathBuf::from(path.trim())));
    }
    let home = vars.get("HOME").filter(|h| !h.trim().is_empty()).map(|h| {
        Path::new(h.trim())
            .join(".tencentcloud")
            .join("credentials")
    });
    Ok(home
        .into_iter()
        .chain([PathBuf::from(SYSTEM_PATH)])
        .find(|p| p.exists()))
}

/// The `[default]` keys of the file at `path`. Errors name the file and the key, never a value.
pub(super) fn read(path: &Path) -> Result<Credentials, CredentialError> {
    let fail = |reason: String| CredentialError::Profile {
        path: path.display().to_string(),
        reason,
    };
    let content = read_limited(path).map_err(fail)?;
    let text = String::from_utf8(content).map_err(|_| fail("not UTF-8 text".into()))?;
    // The parser's own messages may quote the line: only say where the format broke.
    let ini = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Ini))
        .build()
        .map_err(|_| fail("not an INI file".into()))?;
    let key = |name: &str| {
        ini.get_string(&format!("default.{name}"))
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| fail(format!("no {name} in its [default] section")))
    };
    let credentials = Credentials {
        secret_id: key("secret_id")?,
        secret_key: Secret::new(key("secret_key")?),
        session_token: None,
    };
    credentials.check().map_err(fail)?;
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_variable_wins_then_home() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        assert!(locate(&vars(&[("HOME", home)]))
            .unwrap()
            .is_none_or(|p| p == Path::new(SYSTEM_PATH)));
        let file = dir.path().join(".tencentcloud").join("credentials");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "[default]\nsecret_id = AKIDhome\nsecret_key = k\n").unwrap();
        assert_eq!(
            locate(&vars(&[("HOME", home)])).unwrap(),
            Some(file.clone())
        );
        assert_eq!(
            locate(&vars(&[("HOME", home), (PATH_VAR, "/x/creds")])).unwrap(),
            Some(PathBuf::from("/x/creds"))
        );
        let e = locate(&vars(&[(PATH_VAR, " ")])).unwrap_err().to_string();
        assert!(
            e.contains("TENCENTCLOUD_CREDENTIALS_FILE") && e.contains("empty"),
            "{e}"
        );
        assert_eq!(read(&file).unwrap().secret_id, "AKIDhome");
    }

    #[test]
    fn refusals_name_the_file_and_key_never_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        for (text, says) in [
            (
                "[default]\nsecret_id = AKIDx\n",
                "no secret_key in its [default] section",
            ),
            (
                "[other]\nsecret_id = AKIDx\nsecret_key = NeverShown\n",
                "no secret_id",
            ),
            ("[default\nsecret_key = NeverShown\n", "not an INI file"),
            (
                "[default]\nsecret_id = AK;ID\nsecret_key = NeverShown\n",
                "SecretId has characters",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = read(&file).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("profile file {}", file.display())),
                "{e}"
            );
            assert!(e.contains(says) && !e.contains("NeverShown"), "{e}");
        }
        let e = read(&dir.path().join("absent")).unwrap_err().to_string();
        assert!(e.contains("cannot read: entity not found"), "{e}");
    }
}
