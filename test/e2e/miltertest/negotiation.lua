-- Negotiation against MTAs that offer less than Postfix and Sendmail do. milterd must ask
-- only for what was offered, answer every step the MTA expects an answer to, and refuse
-- (through the failure policy) a modification the MTA did not grant. The chain is
-- `negotiationChain()` in test/e2e/miltertest.test.ts: filter granted adds X-Granted
-- (SMFIF_ADDHDRS), filter not-granted changes Subject (SMFIF_CHGHDRS) with onError continue:
-- where the MTA did not grant CHGHDRS, that filter fails and its edit is dropped.
-- mt.negotiate's arguments are (conn, version, protocol steps, actions) in miltertest 2.11.
-- Globals (miltertest -D): MILTER_SOCKET.

-- miltertest prints a script error only when the Lua stack is otherwise empty: echo it too.
local function fail(fmt, ...) local m = string.format(fmt, ...); mt.echo("FAIL: " .. m); error(m, 2) end
local function ok(err, what) if err ~= nil then fail("%s failed: %s", what, tostring(err)) end end
local function name(r) if r == nil or r == 0 then return "none" end return string.format("'%s'", string.char(r)) end
local function reply(conn, want, what)
  local got = mt.getreply(conn)
  if got ~= want then fail("%s: milter replied %s, expected %s", what, name(got), name(want)) end
  mt.echo(what .. ": " .. name(got))
end

-- The whole message with a reply checked at every step the MTA did not waive.
local function transaction(conn, tag, with_data, change_granted)
  ok(mt.conninfo(conn, "client.example.org", "192.0.2.40"), tag .. " conninfo")
  reply(conn, SMFIR_CONTINUE, tag .. " connect")
  ok(mt.helo(conn, "client.example.org"), tag .. " helo")
  reply(conn, SMFIR_CONTINUE, tag .. " helo")
  ok(mt.mailfrom(conn, "<sender@example.org>"), tag .. " mailfrom")
  reply(conn, SMFIR_CONTINUE, tag .. " envfrom")
  ok(mt.rcptto(conn, "<rcpt@example.net>"), tag .. " rcptto")
  reply(conn, SMFIR_CONTINUE, tag .. " envrcpt")
  if with_data then
    ok(mt.data(conn), tag .. " data")
    reply(conn, SMFIR_CONTINUE, tag .. " data")
  end
  ok(mt.header(conn, "From", "Sender <sender@example.org>"), tag .. " header From")
  reply(conn, SMFIR_CONTINUE, tag .. " header From")
  ok(mt.header(conn, "Subject", "Negotiation"), tag .. " header Subject")
  reply(conn, SMFIR_CONTINUE, tag .. " header Subject")
  if not mt.test_option(conn, SMFIP_NOEOH) then
    ok(mt.eoh(conn), tag .. " eoh")
    reply(conn, SMFIR_CONTINUE, tag .. " eoh")
  end
  ok(mt.bodystring(conn, "First chunk.\r\n"), tag .. " body 1")
  reply(conn, SMFIR_CONTINUE, tag .. " body 1")
  ok(mt.bodystring(conn, "Second chunk.\r\n"), tag .. " body 2")
  reply(conn, SMFIR_CONTINUE, tag .. " body 2")
  ok(mt.eom(conn), tag .. " eom")
  local r = mt.getreply(conn)
  if r ~= SMFIR_ACCEPT and r ~= SMFIR_CONTINUE then fail("%s eom: milter replied %s", tag, name(r)) end
  if not mt.eom_check(conn, MT_HDRADD, "X-Granted", "yes") then fail("%s eom: X-Granted not added", tag) end
  if change_granted then
    if not mt.eom_check(conn, MT_HDRCHANGE, "Subject", "must not reach the MTA") then fail("%s eom: granted Subject change missing", tag) end
    mt.echo(tag .. " eom: X-Granted and the Subject change")
  else
    if mt.eom_check(conn, MT_HDRCHANGE) then fail("%s eom: a header change was sent although SMFIF_CHGHDRS was not granted", tag) end
    mt.echo(tag .. " eom: X-Granted only")
  end
end

-- 1. A version 2 MTA (no DATA command, no NR_* or SKIP): v2 actions and steps.
local c1 = mt.connect(MILTER_SOCKET)
if c1 == nil then fail("cannot connect to %s", MILTER_SOCKET) end
ok(mt.negotiate(c1, 2, 0x7F, 0x3F), "negotiate v2")
for _, o in ipairs({ { SMFIP_NR_HDR, "NR_HDR" }, { SMFIP_NR_BODY, "NR_BODY" }, { SMFIP_HDR_LEADSPC, "HDR_LEADSPC" } }) do
  if mt.test_option(c1, o[1]) then fail("v2: milterd asked for SMFIP_%s, which was not offered", o[2]) end
end
-- Both actions the chain declares are within the v2 set: both asked for, both granted.
if not (mt.test_action(c1, SMFIF_ADDHDRS) and mt.test_action(c1, SMFIF_CHGHDRS)) then fail("v2: SMFIF_ADDHDRS|CHGHDRS not requested") end
transaction(c1, "v2", false, true)
ok(mt.disconnect(c1), "disconnect v2")

-- 2. A v6 MTA that grants only SMFIF_ADDHDRS and no NR_*, NODATA or NOUNKNOWN.
local c2 = mt.connect(MILTER_SOCKET)
if c2 == nil then fail("cannot connect to %s", MILTER_SOCKET) end
ok(mt.negotiate(c2, 6, 0x7F, SMFIF_ADDHDRS), "negotiate v6 restricted")
if not mt.test_action(c2, SMFIF_ADDHDRS) then fail("v6: SMFIF_ADDHDRS not requested") end
if mt.test_action(c2, SMFIF_CHGHDRS) then fail("v6: SMFIF_CHGHDRS requested though not offered") end
transaction(c2, "v6", true, false)
-- The MTA sends UNKNOWN (NOUNKNOWN was not offered): milterd must answer it.
ok(mt.unknown(c2, "XYZZY"), "unknown")
reply(c2, SMFIR_CONTINUE, "v6 unknown")
ok(mt.disconnect(c2), "disconnect v6")
mt.echo("done")
