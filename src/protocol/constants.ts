/**
 * Milter protocol v6 wire constants, named as in Sendmail's `include/libmilter/mfdef.h`
 * (8.18) and `mfapi.h`. Every value here is on the wire: do not renumber.
 *
 * `[v6]` marks what protocol version 6 (Sendmail 8.14) added.
 * @module
 */

/** Highest protocol version we speak. `SMFI_PROT_VERSION` in mfdef.h. */
export const SMFI_PROT_VERSION = 6;
/** Lowest MTA protocol version we accept. libmilter refuses below 2 (`SMFI_PROT_VERSION_MIN`). */
export const SMFI_PROT_VERSION_MIN = 2;

/** Length of the big-endian uint32 packet length prefix. `MILTER_LEN_BYTES`. */
export const MILTER_LEN_BYTES = 4;
/** Payload of OPTNEG: version, actions, protocol flags. `MILTER_OPTLEN`. */
export const MILTER_OPTLEN = MILTER_LEN_BYTES * 3;
/** Largest body chunk an MTA sends and a REPLBODY chunk we send. `MILTER_CHUNK_SIZE`. */
export const MILTER_CHUNK_SIZE = 65535;
/**
 * libmilter's default data limit (`MILTER_MAX_DATA_SIZE`): libmilter drops a connection
 * whose packet data exceeds it. We are more lenient (see the configurable frame cap), since
 * a header near 64 KiB plus its name and NULs can exceed it by a few bytes.
 */
export const MILTER_MAX_DATA_SIZE = 65535;

/** Commands from the MTA (`SMFIC_*`). */
export const SMFIC = {
  ABORT: 0x41, // 'A' SMFIC_ABORT: abort current message; never answered
  BODY: 0x42, // 'B' SMFIC_BODY: body chunk
  CONNECT: 0x43, // 'C' SMFIC_CONNECT: connection information
  MACRO: 0x44, // 'D' SMFIC_MACRO: define macros for the next command
  BODYEOB: 0x45, // 'E' SMFIC_BODYEOB: end of body (end of message)
  HELO: 0x48, // 'H' SMFIC_HELO: HELO/EHLO argument
  QUIT_NC: 0x4b, // 'K' SMFIC_QUIT_NC [v6]: quit, a new connection follows on this socket
  HEADER: 0x4c, // 'L' SMFIC_HEADER: one header
  MAIL: 0x4d, // 'M' SMFIC_MAIL: MAIL FROM
  EOH: 0x4e, // 'N' SMFIC_EOH: end of headers
  OPTNEG: 0x4f, // 'O' SMFIC_OPTNEG: option negotiation
  QUIT: 0x51, // 'Q' SMFIC_QUIT: close the connection; never answered
  RCPT: 0x52, // 'R' SMFIC_RCPT: RCPT TO
  DATA: 0x54, // 'T' SMFIC_DATA [v4+]: DATA command
  UNKNOWN: 0x55, // 'U' SMFIC_UNKNOWN [v3+]: an SMTP command the MTA did not recognise
} as const;
export type SmficCode = (typeof SMFIC)[keyof typeof SMFIC];

/** Replies and modification actions from the filter (`SMFIR_*`). */
export const SMFIR = {
  ADDRCPT: 0x2b, // '+' SMFIR_ADDRCPT: add recipient
  DELRCPT: 0x2d, // '-' SMFIR_DELRCPT: remove recipient
  ADDRCPT_PAR: 0x32, // '2' SMFIR_ADDRCPT_PAR [v6]: add recipient with ESMTP args
  SHUTDOWN: 0x34, // '4' SMFIR_SHUTDOWN: 421 shutdown (no libmilter call sends it)
  ACCEPT: 0x61, // 'a' SMFIR_ACCEPT
  REPLBODY: 0x62, // 'b' SMFIR_REPLBODY: replace body (one chunk; repeatable)
  CONTINUE: 0x63, // 'c' SMFIR_CONTINUE
  DISCARD: 0x64, // 'd' SMFIR_DISCARD
  CHGFROM: 0x65, // 'e' SMFIR_CHGFROM [v6]: change envelope sender
  CONN_FAIL: 0x66, // 'f' SMFIR_CONN_FAIL: cause a connection failure (no libmilter call sends it)
  ADDHEADER: 0x68, // 'h' SMFIR_ADDHEADER
  INSHEADER: 0x69, // 'i' SMFIR_INSHEADER: insert header at index
  SETSYMLIST: 0x6c, // 'l' SMFIR_SETSYMLIST (defined; the list travels in the OPTNEG reply)
  CHGHEADER: 0x6d, // 'm' SMFIR_CHGHEADER: change/delete header at index
  PROGRESS: 0x70, // 'p' SMFIR_PROGRESS: keep-alive during long work
  QUARANTINE: 0x71, // 'q' SMFIR_QUARANTINE
  REJECT: 0x72, // 'r' SMFIR_REJECT
  SKIP: 0x73, // 's' SMFIR_SKIP [v6]: skip further body chunks
  TEMPFAIL: 0x74, // 't' SMFIR_TEMPFAIL
  REPLYCODE: 0x79, // 'y' SMFIR_REPLYCODE: "ddd x.y.z text"
  OPTNEG: 0x4f, // 'O' negotiation reply shares the command code SMFIC_OPTNEG
} as const;
export type SmfirCode = (typeof SMFIR)[keyof typeof SMFIR];

/** Address families in SMFIC_CONNECT (`SMFIA_*`). */
export const SMFIA = {
  UNKNOWN: 0x55, // 'U' SMFIA_UNKNOWN: no port or address follow
  UNIX: 0x4c, // 'L' SMFIA_UNIX
  INET: 0x34, // '4' SMFIA_INET
  INET6: 0x36, // '6' SMFIA_INET6
} as const;

/** Actions the filter may take (`SMFIF_*`), negotiated in OPTNEG. */
export const SMFIF = {
  ADDHDRS: 0x01, // SMFIF_ADDHDRS: add (and insert) headers
  CHGBODY: 0x02, // SMFIF_CHGBODY: replace body
  ADDRCPT: 0x04, // SMFIF_ADDRCPT: add recipients
  DELRCPT: 0x08, // SMFIF_DELRCPT: delete recipients
  CHGHDRS: 0x10, // SMFIF_CHGHDRS: change/delete headers
  QUARANTINE: 0x20, // SMFIF_QUARANTINE
  CHGFROM: 0x40, // SMFIF_CHGFROM [v6]
  ADDRCPT_PAR: 0x80, // SMFIF_ADDRCPT_PAR [v6]
  SETSYMLIST: 0x100, // SMFIF_SETSYMLIST [v6]: filter sends macro lists in its OPTNEG reply
} as const;
/** All actions of protocol v6. `SMFI_CURR_ACTS`. */
export const SMFI_CURR_ACTS = 0x1ff;

/** Protocol flags (`SMFIP_*`), negotiated in OPTNEG. */
export const SMFIP = {
  NOCONNECT: 0x1, // SMFIP_NOCONNECT: MTA should not send connect info
  NOHELO: 0x2, // SMFIP_NOHELO
  NOMAIL: 0x4, // SMFIP_NOMAIL
  NORCPT: 0x8, // SMFIP_NORCPT
  NOBODY: 0x10, // SMFIP_NOBODY
  NOHDRS: 0x20, // SMFIP_NOHDRS
  NOEOH: 0x40, // SMFIP_NOEOH
  NR_HDR: 0x80, // SMFIP_NR_HDR (alias SMFIP_NOHREPL): no reply for headers
  NOUNKNOWN: 0x100, // SMFIP_NOUNKNOWN
  NODATA: 0x200, // SMFIP_NODATA
  SKIP: 0x400, // SMFIP_SKIP [v6]: MTA understands SMFIR_SKIP
  RCPT_REJ: 0x800, // SMFIP_RCPT_REJ [v6]: MTA also sends rejected RCPTs
  NR_CONN: 0x1000, // SMFIP_NR_CONN [v6]: no reply for connect
  NR_HELO: 0x2000, // SMFIP_NR_HELO [v6]
  NR_MAIL: 0x4000, // SMFIP_NR_MAIL [v6]
  NR_RCPT: 0x8000, // SMFIP_NR_RCPT [v6]
  NR_DATA: 0x10000, // SMFIP_NR_DATA [v6]
  NR_UNKN: 0x20000, // SMFIP_NR_UNKN [v6]
  NR_EOH: 0x40000, // SMFIP_NR_EOH [v6]
  NR_BODY: 0x80000, // SMFIP_NR_BODY [v6]
  HDR_LEADSPC: 0x100000, // SMFIP_HDR_LEADSPC [v6]: header values keep their leading space
  MDS_256K: 0x10000000, // SMFIP_MDS_256K: MILTER_MAX_DATA_SIZE = 256K
  MDS_1M: 0x20000000, // SMFIP_MDS_1M: MILTER_MAX_DATA_SIZE = 1M
} as const;
/** All protocol bits of v6. `SMFI_CURR_PROT`. */
export const SMFI_CURR_PROT = 0x1fffff;

/**
 * Macro stages (`SMFIM_*`): the index used in a SETSYMLIST list of the OPTNEG reply.
 * Note the order: EOM (5) comes before EOH (6), as in mfapi.h.
 */
export const SMFIM = {
  CONNECT: 0, // SMFIM_CONNECT
  HELO: 1, // SMFIM_HELO
  ENVFROM: 2, // SMFIM_ENVFROM
  ENVRCPT: 3, // SMFIM_ENVRCPT
  DATA: 4, // SMFIM_DATA
  EOM: 5, // SMFIM_EOM
  EOH: 6, // SMFIM_EOH
} as const;
export type SmfimStage = (typeof SMFIM)[keyof typeof SMFIM];

/** Longest text of one reply line, as smfi_setreply enforces (`MAXREPLYLEN` 980). */
export const MAXREPLYLEN = 980;
/** Most lines smfi_setmlreply accepts (`MAXREPLIES` 32). */
export const MAXREPLIES = 32;
