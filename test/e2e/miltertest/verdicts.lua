-- Verdicts through milterd, each at the phase where an MTA acts on it: reject at connect with a
-- custom reply, tempfail at MAIL, multi-line reject at RCPT, then at end of message discard,
-- reject with a custom reply, plain tempfail, and finally a normal message on the same
-- connection. The chain is `verdictsChain()` in test/e2e/miltertest.test.ts.
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

-- 1. A client the connect hook refuses.
local c1 = mt.connect(MILTER_SOCKET)
if c1 == nil then fail("cannot connect to %s", MILTER_SOCKET) end
ok(mt.negotiate(c1, nil, nil, nil), "negotiate 1")
ok(mt.conninfo(c1, "bad.example.org", "198.51.100.7"), "conninfo 1")
reply(c1, SMFIR_REPLYCODE, "connect bad.example.org")
ok(mt.disconnect(c1), "disconnect 1")

-- 2. A good client; each message below ends differently.
local c = mt.connect(MILTER_SOCKET)
if c == nil then fail("cannot connect to %s", MILTER_SOCKET) end
ok(mt.negotiate(c, nil, nil, nil), "negotiate 2")
local sp = ""
if mt.test_option(c, SMFIP_HDR_LEADSPC) then sp = " " end
ok(mt.conninfo(c, "good.example.org", "192.0.2.30"), "conninfo 2")
reply(c, SMFIR_CONTINUE, "connect good.example.org")
ok(mt.helo(c, "good.example.org"), "helo")

-- tempfail at MAIL (no custom reply)
ok(mt.mailfrom(c, "<tempfail@example.org>"), "mailfrom tempfail")
reply(c, SMFIR_TEMPFAIL, "envfrom <tempfail@example.org>")
ok(mt.abort(c), "abort after tempfail")

local function message(body, what)
  ok(mt.mailfrom(c, "<sender@example.org>"), "mailfrom " .. what)
  reply(c, SMFIR_CONTINUE, "envfrom " .. what)
  ok(mt.rcptto(c, "<rcpt@example.net>"), "rcptto " .. what)
  reply(c, SMFIR_CONTINUE, "envrcpt " .. what)
  if what == "multiline" then
    ok(mt.rcptto(c, "<multiline@example.net>"), "rcptto multiline")
    reply(c, SMFIR_REPLYCODE, "envrcpt <multiline@example.net>")
  end
  if not mt.test_option(c, SMFIP_NODATA) then ok(mt.data(c), "data " .. what) end
  ok(mt.header(c, "Subject", what), "header " .. what)
  if not mt.test_option(c, SMFIP_NOEOH) then ok(mt.eoh(c), "eoh " .. what) end
  ok(mt.bodystring(c, body), "body " .. what)
  ok(mt.eom(c), "eom " .. what)
end

message("DISCARD-ME\r\n", "discard")
reply(c, SMFIR_DISCARD, "eom discard")

message("REJECT-ME\r\n", "reject")
reply(c, SMFIR_REPLYCODE, "eom reject")
if not mt.eom_check(c, MT_SMTPREPLY, "550", "5.7.1", "content refused by milterd") then
  fail("eom reject: expected reply 550 5.7.1 content refused by milterd")
end

message("TEMPFAIL-ME\r\n", "tempfail")
reply(c, SMFIR_TEMPFAIL, "eom tempfail")

message("Fine.\r\n", "multiline")
local r = mt.getreply(c)
if r ~= SMFIR_ACCEPT and r ~= SMFIR_CONTINUE then fail("eom multiline: milter replied %s", name(r)) end
if not mt.eom_check(c, MT_HDRADD, "X-Verdict", sp .. "delivered") then fail("eom multiline: X-Verdict not added") end
mt.echo("eom multiline: delivered")

ok(mt.disconnect(c), "disconnect 2")
mt.echo("done")
