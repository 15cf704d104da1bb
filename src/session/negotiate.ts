/**
 * Option negotiation (SMFIC_OPTNEG), derived from what the chain needs.
 *
 * - Version: we answer min(MTA's, 6) and refuse below 2 (libmilter's SMFI_PROT_VERSION_MIN);
 *   answering v2 to a v6 MTA loses every v6 feature (emersion/go-milter#29).
 * - Actions and flags: only bits the MTA offered, or both Postfix and Sendmail drop us.
 * - SMFIP_NO*: phases no filter uses are not sent at all. Connect, HELO, MAIL and RCPT are
 *   always kept (cheap, and they carry what logs and end-of-message filters need); with no
 *   hook they get SMFIP_NR_* so the MTA does not wait for an answer.
 * - Content: the host buffers headers and body and runs the filters at end of message, so
 *   header, EOH and body never need an answer: SMFIP_NR_HDR / NR_EOH / NR_BODY whenever a
 *   filter reads them, SMFIP_NOHDRS / NOEOH / NOBODY when none does. This is the main lever
 *   on throughput: one round trip per message instead of one per header.
 * - SMFIP_HDR_LEADSPC whenever offered: header values then arrive exactly as in the message,
 *   and we send added values with their leading space ourselves.
 * @module
 */
import { MilterdError } from '../errors.ts';
import { SMFI_PROT_VERSION, SMFI_PROT_VERSION_MIN, SMFIF, SMFIM, SMFIP, type SmfimStage } from '../protocol/constants.ts';
import type { MilterReply, SymbolList } from '../protocol/types.ts';
import type { ChainNeeds } from '../chain/chain.ts';
import type { FilterAction, MacroStage } from '../chain/filter.ts';

/** The result of negotiation, for the session. */
export interface Negotiated {
  readonly version: number;
  readonly actions: number;
  readonly protocol: number;
  /** Filter actions the MTA granted. */
  readonly grantedActions: ReadonlySet<FilterAction>;
  readonly reply: MilterReply;
}

const ACTION_BITS: Readonly<Record<FilterAction, number>> = {
  addHeader: SMFIF.ADDHDRS,
  changeHeader: SMFIF.CHGHDRS,
  replaceBody: SMFIF.CHGBODY,
  addRcpt: SMFIF.ADDRCPT | SMFIF.ADDRCPT_PAR,
  delRcpt: SMFIF.DELRCPT,
  changeFrom: SMFIF.CHGFROM,
  quarantine: SMFIF.QUARANTINE,
};

const STAGES: Readonly<Record<MacroStage, SmfimStage>> = {
  connect: SMFIM.CONNECT,
  helo: SMFIM.HELO,
  envfrom: SMFIM.ENVFROM,
  envrcpt: SMFIM.ENVRCPT,
  data: SMFIM.DATA,
  eoh: SMFIM.EOH,
  eom: SMFIM.EOM,
};

/**
 * Macros we always want where a list is set: a SETSYMLIST list replaces the MTA's default for
 * that stage, so we keep the defaults of Postfix and Sendmail there (and `i`, the queue id,
 * which our logs carry).
 */
const BASE_MACROS: Readonly<Record<MacroStage, readonly string[]>> = {
  connect: ['j', '_', '{daemon_name}', '{daemon_addr}', '{if_name}', '{if_addr}', 'v'],
  helo: ['{tls_version}', '{cipher}', '{cipher_bits}', '{cert_subject}', '{cert_issuer}'],
  envfrom: ['i', '{auth_type}', '{auth_authen}', '{auth_ssf}', '{auth_author}', '{mail_mailer}', '{mail_host}', '{mail_addr}'],
  envrcpt: ['i', '{rcpt_mailer}', '{rcpt_host}', '{rcpt_addr}'],
  data: ['i'],
  eoh: ['i'],
  eom: ['i', '{msg_id}'],
};

/** Builds our OPTNEG answer. Throws MILTERD_SESSION_VERSION for an MTA below v2. */
export function negotiate(
  offer: { readonly version: number; readonly actions: number; readonly protocol: number },
  needs: ChainNeeds,
): Negotiated {
  if (offer.version < SMFI_PROT_VERSION_MIN) {
    throw new MilterdError('MILTERD_SESSION_VERSION', `MTA offered milter protocol version ${offer.version}; at least 2 is needed`);
  }
  const version = Math.min(offer.version, SMFI_PROT_VERSION);

  let wantActions = 0;
  for (const a of needs.actions) wantActions |= ACTION_BITS[a];
  const symlists: SymbolList[] = [];
  if (needs.macros.size > 0 && (offer.actions & SMFIF.SETSYMLIST) !== 0) {
    wantActions |= SMFIF.SETSYMLIST;
    for (const [stage, names] of needs.macros) {
      const all = new Set([...BASE_MACROS[stage], ...names]);
      symlists.push({ stage: STAGES[stage], macros: [...all] });
    }
    symlists.sort((a, b) => a.stage - b.stage);
  }
  const actions = wantActions & offer.actions;

  const h = needs.hooks;
  let want = SMFIP.HDR_LEADSPC;
  if (!h.has('connect')) want |= SMFIP.NR_CONN;
  if (!h.has('helo')) want |= SMFIP.NR_HELO;
  if (!h.has('envfrom')) want |= SMFIP.NR_MAIL;
  if (!h.has('envrcpt')) want |= SMFIP.NR_RCPT;
  if (!h.has('data')) want |= needs.macros.has('data') ? SMFIP.NR_DATA : SMFIP.NODATA;
  if (!h.has('unknown')) want |= SMFIP.NOUNKNOWN;
  want |= needs.headers ? SMFIP.NR_HDR : SMFIP.NOHDRS;
  want |= needs.macros.has('eoh') ? SMFIP.NR_EOH : SMFIP.NOEOH | SMFIP.NR_EOH;
  want |= needs.body ? SMFIP.NR_BODY : SMFIP.NOBODY;
  const protocol = want & offer.protocol;

  const granted = new Set<FilterAction>();
  for (const a of needs.actions) {
    // addRcpt needs only SMFIF_ADDRCPT; with args it also needs ADDRCPT_PAR (checked per call).
    const bit = a === 'addRcpt' ? SMFIF.ADDRCPT : ACTION_BITS[a];
    if ((actions & bit) !== 0) granted.add(a);
  }
  const reply: MilterReply =
    symlists.length > 0 && (actions & SMFIF.SETSYMLIST) !== 0
      ? { kind: 'optneg', version, actions, protocol, symlists }
      : { kind: 'optneg', version, actions, protocol };
  return { version, actions, protocol, grantedActions: granted, reply };
}

/** The NO* and NR_* flags that make a hook of each phase unusable on a connection. */
const PHASE_BLOCKERS: Readonly<Record<string, number>> = {
  connect: SMFIP.NOCONNECT | SMFIP.NR_CONN,
  helo: SMFIP.NOHELO | SMFIP.NR_HELO,
  envfrom: SMFIP.NOMAIL | SMFIP.NR_MAIL,
  envrcpt: SMFIP.NORCPT | SMFIP.NR_RCPT,
  data: SMFIP.NODATA | SMFIP.NR_DATA,
  unknown: SMFIP.NOUNKNOWN | SMFIP.NR_UNKN,
};

/**
 * Can a connection negotiated as `neg` run a chain with these needs? (After a reload, open
 * connections move to the new chain at their next message only if it fits what they
 * negotiated: a new hook on a phase the MTA was told not to send, or not to wait for, or an
 * action the MTA did not grant, cannot work there.)
 */
export function fits(needs: ChainNeeds, neg: Pick<Negotiated, 'protocol' | 'actions'>): boolean {
  for (const p of needs.hooks) {
    const blockers = PHASE_BLOCKERS[p];
    if (blockers !== undefined && (neg.protocol & blockers) !== 0) return false;
  }
  if (needs.headers && (neg.protocol & SMFIP.NOHDRS) !== 0) return false;
  if (needs.body && (neg.protocol & SMFIP.NOBODY) !== 0) return false;
  for (const a of needs.actions) {
    const bit = a === 'addRcpt' ? SMFIF.ADDRCPT : ACTION_BITS[a];
    if ((neg.actions & bit) === 0) return false;
  }
  return true;
}
