//! Operator text in English or Simplified Chinese, chosen as `tollwayctl`
//! chooses: Chinese when the first set of `LC_ALL`, `LC_MESSAGES` and `LANG`
//! (the POSIX precedence) starts with `zh_CN`. Field terms (node ids,
//! generation, deployment) stay as written in both.

use std::sync::OnceLock;

/// Returns true when the environment requests Simplified Chinese.
pub fn chinese() -> bool {
    static CHINESE: OnceLock<bool> = OnceLock::new();
    *CHINESE.get_or_init(|| {
        ["LC_ALL", "LC_MESSAGES", "LANG"]
            .iter()
            .filter_map(|name| std::env::var(name).ok())
            .find(|value| !value.is_empty())
            .is_some_and(|locale| locale.starts_with("zh_CN"))
    })
}

/// Returns `english` or `chinese` for the current language.
pub fn text<'a>(english: &'a str, chinese_text: &'a str) -> &'a str {
    if chinese() { chinese_text } else { english }
}
