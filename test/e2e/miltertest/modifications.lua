-- Every end-of-message modification through milterd: add, insert, change and delete header,
-- add recipient, add recipient with ESMTP args, delete recipient, change sender with ESMTP
-- args, replace body, quarantine. The chain is `modificationsChain()` in
-- test/e2e/miltertest.test.ts: filter mod-headers edits headers and body, filter mod-envelope
-- (after it) the envelope and quarantine. eom_check cannot see SMFIR_ADDRCPT_PAR nor
-- SMFIR_CHGFROM: the test asserts those on the packets its tap recorded.
-- Globals (miltertest -D): MILTER_SOCKET; LEADSPC = "1" (offer SMFIP_HDR_LEADSPC, as Postfix
-- and Sendmail do: miltertest then sends " value" and expects the milter's values the same way)
-- or "0" (do not offer it: values travel without their leading space both ways).

-- miltertest prints a script error only when the Lua stack is otherwise empty: echo it too.
local function fail(fmt, ...) local m = string.format(fmt, ...); mt.echo("FAIL: " .. m); error(m, 2) end
local function ok(err, what) if err ~= nil then fail("%s failed: %s", what, tostring(err)) end end
local function name(r) if r == nil or r == 0 then return "none" end return string.format("'%s'", string.char(r)) end

local conn = mt.connect(MILTER_SOCKET)
if conn == nil then fail("cannot connect to %s", MILTER_SOCKET) end
-- miltertest's argument order is (conn, version, protocol steps, actions), whatever its man
-- page says; nil offers everything (SMFI_CURR_PROT, SMFI_CURR_ACTS).
local steps = nil
if LEADSPC == "0" then steps = 0x1FFFFF - 0x100000 end
ok(mt.negotiate(conn, 6, steps, nil), "negotiate")
local sp = ""
if mt.test_option(conn, SMFIP_HDR_LEADSPC) then sp = " " end
if (LEADSPC == "0") == (sp == " ") then fail("HDR_LEADSPC negotiated=%s with LEADSPC=%s", tostring(sp == " "), tostring(LEADSPC)) end
mt.echo("leadspc=" .. tostring(sp == " "))

-- The actions the chain declares must have been requested.
for _, a in ipairs({
  { SMFIF_ADDHDRS, "ADDHDRS" }, { SMFIF_CHGHDRS, "CHGHDRS" }, { SMFIF_CHGBODY, "CHGBODY" },
  { SMFIF_ADDRCPT, "ADDRCPT" }, { SMFIF_ADDRCPT_PAR, "ADDRCPT_PAR" }, { SMFIF_DELRCPT, "DELRCPT" },
  { SMFIF_CHGFROM, "CHGFROM" }, { SMFIF_QUARANTINE, "QUARANTINE" },
}) do
  if not mt.test_action(conn, a[1]) then fail("milterd did not request SMFIF_%s", a[2]) end
end

ok(mt.conninfo(conn, "client.example.org", "192.0.2.20"), "conninfo")
ok(mt.helo(conn, "client.example.org"), "helo")
ok(mt.mailfrom(conn, "<sender@example.org>"), "mailfrom")
ok(mt.rcptto(conn, "<keep@example.net>"), "rcptto keep")
ok(mt.rcptto(conn, "<deleted@example.net>"), "rcptto deleted")
if not mt.test_option(conn, SMFIP_NODATA) then ok(mt.data(conn), "data") end
ok(mt.header(conn, "From", "Sender <sender@example.org>"), "header From")
ok(mt.header(conn, "To", "<keep@example.net>"), "header To")
ok(mt.header(conn, "Subject", "Original subject"), "header Subject")
ok(mt.header(conn, "X-Remove-Me", "please"), "header X-Remove-Me")
if not mt.test_option(conn, SMFIP_NOEOH) then ok(mt.eoh(conn), "eoh") end
ok(mt.bodystring(conn, "Original body.\r\n"), "body")
ok(mt.eom(conn), "eom")
local r = mt.getreply(conn)
if r ~= SMFIR_ACCEPT and r ~= SMFIR_CONTINUE then fail("eom: milter replied %s", name(r)) end

local function check(what, ...)
  if not mt.eom_check(conn, ...) then fail("eom: %s not requested", what) end
  mt.echo("ok: " .. what)
end
check("add header X-Added", MT_HDRADD, "X-Added", sp .. "added value")
check("insert header X-Inserted at index 0", MT_HDRINSERT, "X-Inserted", sp .. "inserted at top", 0)
check("change header Subject", MT_HDRCHANGE, "Subject", sp .. "Changed subject")
check("delete header X-Remove-Me", MT_HDRDELETE, "X-Remove-Me")
check("add recipient <added@example.net>", MT_RCPTADD, "<added@example.net>")
check("delete recipient <deleted@example.net>", MT_RCPTDELETE, "<deleted@example.net>")
check("replace body", MT_BODYCHANGE, "Replaced body.\r\n")
check("quarantine", MT_QUARANTINE, "held by milterd test")
-- No other header edits than those: Subject was changed, not deleted; nothing else added.
if mt.eom_check(conn, MT_HDRDELETE, "Subject") then fail("eom: Subject deleted instead of changed") end
if mt.eom_check(conn, MT_HDRADD, "X-Inserted") then fail("eom: X-Inserted appended instead of inserted") end

ok(mt.disconnect(conn), "disconnect")
mt.echo("done")
