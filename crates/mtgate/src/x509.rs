//! The few facts mtgate reads from an X.509 certificate (subject and issuer
//! names, notAfter) with a bounded DER walk: the doctor reports them for the
//! mask site, the own site reports its certificates' expiry. Untrusted bytes;
//! every length is checked, nothing panics.

use crate::civil::parse_asn1_time;

/// Subject CN, issuer CN and notAfter of a DER certificate.
pub struct CertInfo {
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub not_after: Option<i64>,
}

/// One DER TLV: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut l = 0usize;
        for i in 0..n {
            l = (l << 8) | *b.get(2 + i)? as usize;
        }
        (l, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    Some((tag, b.get(hdr..end)?, b.get(end..)?))
}

/// The commonName (OID 2.5.4.3) of a DER Name, else its first attribute.
fn name_cn(name: &[u8]) -> Option<String> {
    let mut rest = name;
    let mut first = None;
    while let Some((_, set, r)) = tlv(rest) {
        rest = r;
        let (_, atv, _) = tlv(set)?;
        let (_, oid, val) = tlv(atv)?;
        let (_, v, _) = tlv(val)?;
        let s = String::from_utf8_lossy(v).into_owned();
        if oid == [0x55, 0x04, 0x03] {
            return Some(format!("CN={s}"));
        }
        if first.is_none() {
            first = Some(s);
        }
    }
    first
}

pub fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut r = tbs;
    let (tag, _, rest) = tlv(r)?;
    if tag == 0xa0 {
        r = rest; // explicit version
    }
    let (_, _, r) = tlv(r)?; // serial
    let (_, _, r) = tlv(r)?; // signature algorithm
    let (_, issuer, r) = tlv(r)?;
    let (_, validity, r) = tlv(r)?;
    let (_, subject, _) = tlv(r)?;
    let (_, _, v) = tlv(validity)?;
    let not_after = tlv(v).and_then(|(t, s, _)| parse_asn1_time(t, s));
    Some(CertInfo {
        subject: name_cn(subject),
        issuer: name_cn(issuer),
        not_after,
    })
}

impl CertInfo {
    /// Issued by itself (subject and issuer names equal).
    pub fn self_issued(&self) -> bool {
        self.subject.is_some() && self.subject == self.issuer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::civil::format_date;

    #[test]
    fn certificate_fields() {
        let c = rcgen::generate_simple_self_signed(vec!["mask.test".to_string()]).unwrap();
        let i = cert_info(c.cert.der()).unwrap();
        assert_eq!(i.subject.as_deref(), Some("CN=rcgen self signed cert"));
        assert_eq!(i.issuer, i.subject);
        // rcgen's default validity ends in 4096.
        let t = i.not_after.unwrap();
        assert!(
            format_date(t).starts_with("4096-01-01"),
            "{}",
            format_date(t)
        );
        assert!(cert_info(&[0x30, 0x82, 0xff]).is_none());
        assert!(cert_info(&[]).is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_read_without_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = cert_info(&b);
        }
    }
}
