//! Operator text in English or Simplified Chinese.
//!
//! Chinese is chosen when the first set of `LC_ALL`, `LC_MESSAGES` and
//! `LANG` (the POSIX precedence) starts with `zh_CN`. Field terms
//! (generation, deployment, selector, node ids) stay as written in both.

use std::sync::OnceLock;

/// The language of operator text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    English,
    Chinese,
}

/// Returns the language that the environment requests.
pub fn language() -> Language {
    static LANGUAGE: OnceLock<Language> = OnceLock::new();
    *LANGUAGE.get_or_init(|| {
        let locale = ["LC_ALL", "LC_MESSAGES", "LANG"]
            .iter()
            .filter_map(|name| std::env::var(name).ok())
            .find(|value| !value.is_empty())
            .unwrap_or_default();
        if locale.starts_with("zh_CN") {
            Language::Chinese
        } else {
            Language::English
        }
    })
}

/// Returns `english` or `chinese` for the current language.
pub fn text(english: &'static str, chinese: &'static str) -> &'static str {
    match language() {
        Language::English => english,
        Language::Chinese => chinese,
    }
}
