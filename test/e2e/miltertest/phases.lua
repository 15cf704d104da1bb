-- Every milter phase against milterd, in the order an MTA sends them: connect, helo, envfrom,
-- envrcpt (accepted, rejected with a custom reply, tempfailed), data, header, eoh, body, eom;
-- then a message aborted half way, a message after the abort, an unknown command, quit.
-- The chain is `phasesChain()` in test/e2e/miltertest.test.ts; its filters record every call
-- (asserted there) and report what they saw of each message in headers checked here.
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
local function off(conn, opt, what)
  if mt.test_option(conn, opt) then fail("milterd turned off %s although the chain has a hook for it", what) end
end

local conn = mt.connect(MILTER_SOCKET)
if conn == nil then fail("cannot connect to %s", MILTER_SOCKET) end
ok(mt.negotiate(conn, nil, nil, nil), "negotiate")

off(conn, SMFIP_NOCONNECT, "connect")
off(conn, SMFIP_NOHELO, "helo")
off(conn, SMFIP_NOMAIL, "envfrom")
off(conn, SMFIP_NORCPT, "envrcpt")
off(conn, SMFIP_NODATA, "data")
off(conn, SMFIP_NOUNKNOWN, "unknown")
off(conn, SMFIP_NOHDRS, "header")
off(conn, SMFIP_NOEOH, "eoh (the chain asks for eoh macros)")
off(conn, SMFIP_NOBODY, "body")
-- With HDR_LEADSPC negotiated, miltertest itself puts a space before each header value it
-- sends (as Postfix does), and the values a milter sends back must carry theirs.
local sp = mt.test_option(conn, SMFIP_HDR_LEADSPC) and " " or ""
mt.echo("leadspc=" .. tostring(sp == " "))

-- connect
ok(mt.macro(conn, SMFIC_CONNECT, "j", "mx.example.org", "{daemon_name}", "milterd-test"), "macro connect")
ok(mt.conninfo(conn, "client.example.org", "192.0.2.10"), "conninfo")
reply(conn, SMFIR_CONTINUE, "connect")

-- helo
ok(mt.macro(conn, SMFIC_HELO, "{tls_version}", "TLSv1.3"), "macro helo")
ok(mt.helo(conn, "helo.example.org"), "helo")
reply(conn, SMFIR_CONTINUE, "helo")

-- envfrom, with ESMTP arguments
ok(mt.macro(conn, SMFIC_MAIL, "i", "QID-PHASES-1", "{mail_addr}", "sender@example.org"), "macro mail")
ok(mt.mailfrom(conn, "<sender@example.org>", "BODY=8BITMIME", "SIZE=1234"), "mailfrom")
reply(conn, SMFIR_CONTINUE, "envfrom")

-- envrcpt: accepted, rejected with a custom reply (text checked on the wire), tempfailed
ok(mt.macro(conn, SMFIC_RCPT, "{rcpt_addr}", "rcpt1@example.net"), "macro rcpt")
ok(mt.rcptto(conn, "<rcpt1@example.net>", "NOTIFY=SUCCESS,FAILURE"), "rcptto rcpt1")
reply(conn, SMFIR_CONTINUE, "envrcpt rcpt1")
ok(mt.rcptto(conn, "<reject-me@example.net>"), "rcptto reject-me")
reply(conn, SMFIR_REPLYCODE, "envrcpt reject-me")
ok(mt.rcptto(conn, "<tempfail-me@example.net>"), "rcptto tempfail-me")
reply(conn, SMFIR_TEMPFAIL, "envrcpt tempfail-me")

-- data
ok(mt.macro(conn, string.byte("T"), "{phase_macro}", "data-stage"), "macro data")
ok(mt.data(conn), "data")
reply(conn, SMFIR_CONTINUE, "data")

-- headers, end of headers, body
ok(mt.header(conn, "From", "Sender <sender@example.org>"), "header From")
ok(mt.header(conn, "To", "<rcpt1@example.net>"), "header To")
ok(mt.header(conn, "Subject", "Phase test"), "header Subject")
ok(mt.header(conn, "X-Folded", "first part\n\tsecond part"), "header X-Folded")
ok(mt.macro(conn, string.byte("N"), "{eoh_macro}", "eoh-stage"), "macro eoh")
ok(mt.eoh(conn), "eoh")
ok(mt.bodystring(conn, "Body line one.\r\n"), "body 1")
ok(mt.bodystring(conn, "Body line two.\r\n"), "body 2")

-- end of message: the filters report what they saw in added headers
ok(mt.macro(conn, string.byte("E"), "{msg_id}", "<phases@example.org>"), "macro eom")
ok(mt.eom(conn), "eom")
local r = mt.getreply(conn)
-- libmilter answers SMFIR_CONTINUE at end of message, milterd may answer SMFIR_ACCEPT: both
-- mean "deliver with these changes" to every MTA.
if r ~= SMFIR_ACCEPT and r ~= SMFIR_CONTINUE then fail("eom: milter replied %s", name(r)) end
local function added(hname, value)
  if not mt.eom_check(conn, MT_HDRADD, hname, sp .. value) then
    fail("eom: header %s was not added with value %q (got %q)", hname, sp .. value, tostring(mt.getheader(conn, hname, 0)))
  end
  mt.echo("added " .. hname .. ": " .. value)
end
added("X-Phase-Log", "connect helo envfrom envrcpt envrcpt envrcpt data header header header header eoh body eom")
added("X-Seen-Envelope", "from=<sender@example.org> args=BODY=8BITMIME,SIZE=1234 rcpts=<rcpt1@example.net>")
added("X-Seen-Headers", "From|To|Subject|X-Folded")
added("X-Seen-Body", "Body line one.\\r\\nBody line two.\\r\\n")

-- a second message, aborted after its headers
ok(mt.macro(conn, SMFIC_MAIL, "i", "QID-PHASES-2"), "macro mail 2")
ok(mt.mailfrom(conn, "<aborted@example.org>"), "mailfrom 2")
reply(conn, SMFIR_CONTINUE, "envfrom 2")
ok(mt.rcptto(conn, "<rcpt2@example.net>"), "rcptto 2")
reply(conn, SMFIR_CONTINUE, "envrcpt 2")
ok(mt.data(conn), "data 2")
reply(conn, SMFIR_CONTINUE, "data 2")
ok(mt.header(conn, "Subject", "will be aborted"), "header 2")
ok(mt.abort(conn), "abort")
mt.echo("aborted message 2")

-- a third message on the same connection: no state may leak from the aborted one
ok(mt.macro(conn, SMFIC_MAIL, "i", "QID-PHASES-3"), "macro mail 3")
ok(mt.mailfrom(conn, "<third@example.org>"), "mailfrom 3")
reply(conn, SMFIR_CONTINUE, "envfrom 3")
ok(mt.rcptto(conn, "<rcpt3@example.net>"), "rcptto 3")
reply(conn, SMFIR_CONTINUE, "envrcpt 3")
ok(mt.data(conn), "data 3")
reply(conn, SMFIR_CONTINUE, "data 3")
ok(mt.header(conn, "Subject", "Third"), "header 3")
ok(mt.eoh(conn), "eoh 3")
ok(mt.bodystring(conn, "Third body.\r\n"), "body 3")
ok(mt.eom(conn), "eom 3")
r = mt.getreply(conn)
if r ~= SMFIR_ACCEPT and r ~= SMFIR_CONTINUE then fail("eom 3: milter replied %s", name(r)) end
added("X-Phase-Log", "envfrom envrcpt data header eoh body eom")
added("X-Seen-Envelope", "from=<third@example.org> args= rcpts=<rcpt3@example.net>")
added("X-Seen-Headers", "Subject")
added("X-Seen-Body", "Third body.\\r\\n")
added("X-Aborts-So-Far", "1")

-- an SMTP command the MTA did not know
ok(mt.unknown(conn, "XYZZY plugh"), "unknown")
reply(conn, SMFIR_REPLYCODE, "unknown")

ok(mt.disconnect(conn), "disconnect")
mt.echo("done")
