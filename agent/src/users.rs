//! Users and groups of this system, by name or number (for who may use the
//! control socket). A leaf: the configuration check and the control socket
//! both resolve `agent.control_users` and `agent.control_group` here.

/// A user name or number to its uid.
pub fn resolve_user(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwnam_r with a valid C string, a zeroed passwd, a buffer of
    // its stated length and an out pointer; only pw_uid is read, on success.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out = std::ptr::null_mut();
        let r = libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
        (r == 0 && !out.is_null()).then_some(pw.pw_uid)
    }
}

/// A group name or number to its gid.
pub fn resolve_group(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: as in resolve_user, with getgrnam_r and gr_gid.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut out = std::ptr::null_mut();
        let r = libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out);
        (r == 0 && !out.is_null()).then_some(gr.gr_gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve() {
        assert_eq!(resolve_user("root"), Some(0));
        assert_eq!(resolve_user("4242"), Some(4242));
        assert_eq!(resolve_group("root"), Some(0));
        assert_eq!(resolve_user("no-such-user-x"), None);
        assert_eq!(resolve_group("no-such-group-x"), None);
    }
}
