//! MD5 for file_checksum's readers: OpenSSL's libcrypto when the build found it (its
//! assembly is ~20% faster than the md-5 crate's on x86, and file checks are bound by
//! MD5), else the md-5 crate.

/// An MD5 computation.
pub(crate) struct FileMd5(Inner);

#[cfg(not(libcrypto_md5))]
type Inner = md5::Md5;

#[cfg(libcrypto_md5)]
type Inner = libcrypto::Md5;

impl FileMd5 {
    pub(crate) fn new() -> Self {
        #[cfg(not(libcrypto_md5))]
        return FileMd5(<md5::Md5 as md5::Digest>::new());
        #[cfg(libcrypto_md5)]
        return FileMd5(libcrypto::Md5::new());
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        #[cfg(not(libcrypto_md5))]
        md5::Digest::update(&mut self.0, data);
        #[cfg(libcrypto_md5)]
        self.0.update(data);
    }

    /// Start over: forget what was hashed so far (the context is reused).
    pub(crate) fn restart(&mut self) {
        #[cfg(not(libcrypto_md5))]
        md5::Digest::reset(&mut self.0);
        #[cfg(libcrypto_md5)]
        self.0.init();
    }

    /// Lower-case hex digest of what was hashed since the start (or [`Self::restart`]).
    pub(crate) fn hex(&mut self) -> String {
        #[cfg(not(libcrypto_md5))]
        return hex::encode(md5::Digest::finalize_reset(&mut self.0));
        #[cfg(libcrypto_md5)]
        return hex::encode(self.0.finish());
    }
}

#[cfg(libcrypto_md5)]
mod libcrypto {
    use std::ffi::{c_int, c_uint, c_void};

    #[repr(C)]
    struct EvpMdCtx {
        _private: [u8; 0],
    }
    #[repr(C)]
    struct EvpMd {
        _private: [u8; 0],
    }

    extern "C" {
        fn EVP_MD_CTX_new() -> *mut EvpMdCtx;
        fn EVP_MD_CTX_free(ctx: *mut EvpMdCtx);
        fn EVP_md5() -> *const EvpMd;
        fn EVP_DigestInit_ex(ctx: *mut EvpMdCtx, md: *const EvpMd, engine: *mut c_void) -> c_int;
        fn EVP_DigestUpdate(ctx: *mut EvpMdCtx, data: *const c_void, len: usize) -> c_int;
        fn EVP_DigestFinal_ex(ctx: *mut EvpMdCtx, out: *mut u8, len: *mut c_uint) -> c_int;
    }

    /// An EVP MD5 context, owned.
    pub(crate) struct Md5(*mut EvpMdCtx);

    // SAFETY: the context is used by one thread at a time (it is moved, never shared).
    unsafe impl Send for Md5 {}

    impl Md5 {
        pub(crate) fn new() -> Self {
            // SAFETY: plain libcrypto calls; the context is checked for NULL before use.
            unsafe {
                let ctx = EVP_MD_CTX_new();
                assert!(!ctx.is_null(), "EVP_MD_CTX_new failed (out of memory)");
                let mut md5 = Md5(ctx);
                md5.init();
                md5
            }
        }

        /// (Re)start the digest.
        pub(crate) fn init(&mut self) {
            // SAFETY: the context is valid (checked at creation).
            let ok = unsafe { EVP_DigestInit_ex(self.0, EVP_md5(), std::ptr::null_mut()) };
            assert!(
                ok == 1,
                "EVP_DigestInit_ex(md5) failed: MD5 disabled in this OpenSSL?"
            );
        }

        pub(crate) fn update(&mut self, data: &[u8]) {
            // SAFETY: `data` is a valid slice for the duration of the call.
            let ok = unsafe { EVP_DigestUpdate(self.0, data.as_ptr().cast(), data.len()) };
            assert!(ok == 1, "EVP_DigestUpdate failed");
        }

        /// The digest; [`Md5::init`] starts the next one.
        pub(crate) fn finish(&mut self) -> [u8; 16] {
            let mut out = [0u8; 16];
            let mut len: c_uint = 0;
            // SAFETY: `out` has room for an MD5 digest (16 bytes).
            let ok = unsafe { EVP_DigestFinal_ex(self.0, out.as_mut_ptr(), &mut len) };
            assert!(ok == 1 && len == 16, "EVP_DigestFinal_ex failed");
            out
        }
    }

    impl Drop for Md5 {
        fn drop(&mut self) {
            // SAFETY: the context came from EVP_MD_CTX_new and is freed once.
            unsafe { EVP_MD_CTX_free(self.0) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_md5_crate() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut h = FileMd5::new();
        for chunk in data.chunks(65_536) {
            h.update(chunk);
        }
        let expected = hex::encode(<md5::Md5 as md5::Digest>::digest(&data));
        assert_eq!(h.hex(), expected);
        assert_eq!(FileMd5::new().hex(), "d41d8cd98f00b204e9800998ecf8427e");
        // Reused: a restart forgets a digest left half done.
        h.restart();
        h.update(b"half done");
        h.restart();
        h.update(&data);
        assert_eq!(h.hex(), expected);
    }
}
