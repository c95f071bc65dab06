# cgw - community gateway daemon. Plain make, pkg-config for every library.
#
#   make            build cgwd, cgwctl and the simulator
#   make run        install missing packages, build, start the demo community
#   make test       install missing packages, build, run every test suite
#   make asan       the test suite under AddressSanitizer + UBSan
#   make bench      run the benchmarks, write tests/bench/RESULTS.md
#   make bench-peers  cgwd beside Node-RED on the 500-device load (npm; not in make test)
#   make fuzz       build the libFuzzer targets (clang) and run each briefly
#   make install    PREFIX=/usr/local DESTDIR=  (binaries stripped: INSTALL_STRIP= keeps symbols)
#   make uninstall  the same PREFIX and DESTDIR: removes what install put there
#   make deps       install the Debian packages cgw needs (as root)

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SBINDIR    ?= $(PREFIX)/sbin
DATADIR    ?= $(PREFIX)/share/cgw
MANDIR     ?= $(PREFIX)/share/man
DOCDIR     ?= $(PREFIX)/share/doc/cgw
INSTALL_STRIP ?= -s
SYSCONFDIR ?= /etc
UNITDIR    ?= /lib/systemd/system
SYSUSERSDIR ?= /usr/lib/sysusers.d
TMPFILESDIR ?= /usr/lib/tmpfiles.d

B          ?= build
CC         ?= cc
PKGS       := libmosquitto libmodbus sqlite3 libcurl libfyaml jansson libsystemd libmicrohttpd libcrypto libxcrypt
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wformat=2 -Wno-format-nonliteral -Wundef -Wvla -Wpointer-arith -Werror
OPT      ?= -O2 -g
SAN      ?=
CFLAGS   += -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(SAN) -fno-common \
            -Idaemon -Idrivers $(PKG_CFLAGS) \
            -DCGW_DATADIR='"$(DATADIR)"'
LDFLAGS  += $(SAN)
LDLIBS   += $(PKG_LIBS) -lpthread -lm

LIB_SRC  := $(filter-out daemon/main.c daemon/cgwctl.c,$(wildcard daemon/*.c)) $(wildcard drivers/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(B)/%.o) $(B)/daemon/console_assets.o
WEB      := $(wildcard daemon/web/*)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
HELP_SRC := $(wildcard tests/unit/helpers/*.c)
SIM_SRC  := $(wildcard tests/sim/*.c)
BENCH_SRC := $(wildcard tests/bench/bench_*.c)
BENCH_BIN := $(BENCH_SRC:tests/bench/%.c=$(B)/bench/%)
TOOL_SRC := $(wildcard tests/tools/*.c)
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(B)/tools/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)

PROGS    := $(B)/cgwd $(if $(wildcard daemon/cgwctl.c),$(B)/cgwctl) $(if $(SIM_SRC),$(B)/cgw-sim)

DEPS_BUILD := gcc make pkg-config libmosquitto-dev libmodbus-dev libsqlite3-dev \
              libcurl4-openssl-dev libfyaml-dev libjansson-dev libsystemd-dev libmicrohttpd-dev \
              libssl-dev libcrypt-dev
DEPS_RUN   := mosquitto mosquitto-clients
DEPS_TEST  := libcmocka-dev socat sqlite3 systemd openssl procps iproute2 curl python3-pymodbus python3-jsonschema chromium nodejs fonts-wqy-microhei
# npm for the browser tests' playwright-core: Debian's package, unless the
# nodejs installed already brings its own (nodesource's conflicts with it)
DEPS_TEST  += $(if $(shell command -v npm 2>/dev/null),,npm)

.PHONY: all browser run test asan bench bench-peers fuzz install uninstall clean deps deps-test check-config format test-faults soak FORCE
.DELETE_ON_ERROR:

all: $(PROGS) $(TOOL_BIN)

$(B)/%.o: %.c
	@mkdir -p $(@D)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

# The shipped profiles' directory is compiled in: rebuild config.o when
# PREFIX/DATADIR changes (make; make install PREFIX=/usr must not install a
# cgwd that looks in /usr/local).
$(B)/datadir.stamp: FORCE
	@mkdir -p $(@D)
	@echo '$(DATADIR)' | cmp -s - $@ || echo '$(DATADIR)' > $@
$(B)/daemon/config.o: $(B)/datadir.stamp

# the console's pages, built in (.incbin)
$(B)/daemon/console_assets.o: daemon/console_assets.S $(WEB)
	@mkdir -p $(@D)
	@echo "  AS      $<"
	@$(CC) -c -o $@ $<

$(B)/libcgw.a: $(LIB_OBJ)
	@rm -f $@
	@$(AR) rcs $@ $^

$(B)/cgwd: $(B)/daemon/main.o $(B)/libcgw.a
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/cgwctl: $(B)/daemon/cgwctl.o $(B)/libcgw.a
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/cgw-sim: $(SIM_SRC:%.c=$(B)/%.o) $(B)/libcgw.a
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/%: tests/unit/%.c $(HELP_SRC) $(B)/libcgw.a
	@mkdir -p $(@D)
	@echo "  CCLD    $@"
	@$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(HELP_SRC) $(B)/libcgw.a $(LDFLAGS) $(LDLIBS) $(CMOCKA_LIBS)

$(B)/bench/%: tests/bench/%.c $(B)/libcgw.a
	@mkdir -p $(@D)
	@echo "  CCLD    $@"
	@$(CC) $(CFLAGS) -o $@ $< $(B)/libcgw.a $(LDFLAGS) $(LDLIBS)

$(B)/tools/%: tests/tools/%.c $(B)/libcgw.a
	@mkdir -p $(@D)
	@echo "  CCLD    $@"
	@$(CC) $(CFLAGS) -o $@ $< $(B)/libcgw.a $(LDFLAGS) $(LDLIBS)

# The benches' bare libmodbus loop is also their memory floor: it links
# libmodbus alone, not cgwd's libraries (46 objects with their dependencies:
# ~1.3 MB of relocations and their text); its plan comes from mb_refplan.
$(B)/tools/mb_ref: tests/tools/mb_ref.c $(B)/tools/mb_refplan
	@mkdir -p $(@D)
	@echo "  CCLD    $@"
	@$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) $(shell pkg-config --libs libmodbus) -lpthread

-include $(shell find $(B) -name '*.d' 2>/dev/null)

# deps: install what is missing (root), or print the exact command (not root).
deps:
	@missing=""; for p in $(DEPS_BUILD) $(DEPS_RUN) $(DEPS_TEST); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "deps: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	else \
	  echo "deps: missing packages; run as root:"; \
	  echo "  apt-get install -y$$missing"; exit 1; \
	fi

run: deps
	@$(MAKE) --no-print-directory all
	@config/demo/run.sh $(B)

test: deps
	@$(MAKE) --no-print-directory all $(UNIT_BIN) $(BENCH_BIN) browser
	@tests/run.sh $(B)

# playwright-core for the console's browser tests, pinned by
# tests/browser/package-lock.json, under $(B)/browser (nothing global; no
# install scripts: it drives Debian's chromium, downloads no browser)
browser: $(B)/browser/node_modules/playwright-core/package.json
$(B)/browser/node_modules/playwright-core/package.json: tests/browser/package.json tests/browser/package-lock.json
	@command -v npm >/dev/null || { echo "browser: needs node and npm (apt-get install nodejs npm)"; exit 1; }
	@mkdir -p $(B)/browser && cp tests/browser/package.json tests/browser/package-lock.json $(B)/browser/
	@cd $(B)/browser && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

# the long fault suite: 20 SIGKILLs under load, a minute-long bad-input storm
test-faults: deps
	@$(MAKE) --no-print-directory all
	@CGW_BUILD=$(CURDIR)/$(B) FAULT_KILLS=20 FAULT_SECONDS=60 bash tests/integration/faults.sh

# 30 minutes of the demo community at 10x speed: RSS and fds printed over time
soak: deps
	@$(MAKE) --no-print-directory all
	@tests/soak.sh $(B)

asan:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory B=build-asan OPT='-O1 -g -fno-omit-frame-pointer' \
	  SAN='-fsanitize=address,undefined -fno-sanitize-recover=undefined' test

bench: deps
	@$(MAKE) --no-print-directory all $(BENCH_BIN)
	@tests/bench/run.sh $(B)

# Peers from the npm registry, pinned by tests/bench/peers/package-lock.json,
# installed under $(B)/peers (nothing global); install scripts are not run.
bench-peers: deps
	@$(MAKE) --no-print-directory all
	@command -v npm >/dev/null || { echo "bench-peers: needs node and npm (apt-get install nodejs npm)"; exit 1; }
	@mkdir -p $(B)/peers && cp tests/bench/peers/package.json tests/bench/peers/package-lock.json $(B)/peers/
	@cd $(B)/peers && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@tests/bench/peers/peers.sh $(B)

fuzz:
	@$(MAKE) --no-print-directory B=build-fuzz CC=clang OPT='-O1 -g' \
	  SAN='-fsanitize=fuzzer-no-link,address,undefined' build-fuzz/libcgw.a
	@mkdir -p build-fuzz/fuzz
	@for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  clang -std=c11 -D_GNU_SOURCE -O1 -g -fsanitize=fuzzer,address,undefined -Idaemon -Idrivers $(PKG_CFLAGS) \
	    -o build-fuzz/fuzz/$$n $$f build-fuzz/libcgw.a $(PKG_LIBS) -lpthread -lm || exit 1; done
	@tests/fuzz/run.sh build-fuzz/fuzz $${FUZZ_SECONDS:-30}

# Documents name the paths of this install: /usr/local in the sources,
# substituted here.
SUBST = sed -e 's|/usr/local/share/cgw|$(DATADIR)|g' -e 's|/usr/local/share/doc/cgw|$(DOCDIR)|g' \
	-e 's|/usr/local/sbin|$(SBINDIR)|g' -e 's|/usr/local/bin|$(BINDIR)|g' \
	-e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@DATADIR@|$(DATADIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g'
DOC_FILES := README.md LICENSE $(wildcard docs/*.md)
MAN_FILES := $(wildcard docs/*.[158])

install: $(B)/cgwd $(if $(wildcard daemon/cgwctl.c),$(B)/cgwctl)
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/profiles \
	  $(DESTDIR)$(SYSCONFDIR)/cgw $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
	  $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(DOCDIR)/examples/demo
	install $(INSTALL_STRIP) -m 0755 $(B)/cgwd $(DESTDIR)$(SBINDIR)/cgwd
	[ ! -f $(B)/cgwctl ] || install $(INSTALL_STRIP) -m 0755 $(B)/cgwctl $(DESTDIR)$(BINDIR)/cgwctl
	install -m 0644 config/profiles/*.yaml $(DESTDIR)$(DATADIR)/profiles/
	for f in $(DOC_FILES); do $(SUBST) $$f > $(DESTDIR)$(DOCDIR)/$${f##*/} && chmod 0644 $(DESTDIR)$(DOCDIR)/$${f##*/}; done
	[ ! -d docs/schema ] || cp -R docs/schema $(DESTDIR)$(DOCDIR)/
	install -d $(DESTDIR)$(DOCDIR)/schema
	install -m 0644 schema/*.json schema/asyncapi.yaml $(DESTDIR)$(DOCDIR)/schema/
	$(SUBST) config/cgw.yaml > $(DESTDIR)$(DOCDIR)/examples/cgw.yaml
	install -m 0644 config/demo/*.yaml $(DESTDIR)$(DOCDIR)/examples/demo/
	chmod 0644 $(DESTDIR)$(DOCDIR)/examples/cgw.yaml
	@# /etc/cgw/cgw.yaml: a commented skeleton that checks; an existing one is the admin's
	[ -f $(DESTDIR)$(SYSCONFDIR)/cgw/cgw.yaml ] || { $(SUBST) config/skeleton.yaml > $(DESTDIR)$(SYSCONFDIR)/cgw/cgw.yaml && \
	  chmod 0640 $(DESTDIR)$(SYSCONFDIR)/cgw/cgw.yaml; }
	$(SUBST) systemd/cgwd.service > $(DESTDIR)$(UNITDIR)/cgwd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/cgwd.service
	install -m 0644 systemd/cgw.sysusers $(DESTDIR)$(SYSUSERSDIR)/cgw.conf
	install -m 0644 systemd/cgw.tmpfiles $(DESTDIR)$(TMPFILESDIR)/cgw.conf
	for m in $(MAN_FILES); do s=$${m##*.}; \
	  $(SUBST) $$m > $(DESTDIR)$(MANDIR)/man$$s/$${m##*/} && chmod 0644 $(DESTDIR)$(MANDIR)/man$$s/$${m##*/}; done
	@# on the real system (no DESTDIR): create the user and the directories now
	if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then \
	  systemd-sysusers $(SYSUSERSDIR)/cgw.conf && systemd-tmpfiles --create $(TMPFILESDIR)/cgw.conf; fi

# What install put there. /etc/cgw/cgw.yaml goes only if it is still the
# skeleton (an edited one is the admin's, as a Debian conffile); the store in
# /var/lib/cgw and the cgw user stay (data, and files the user may own).
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/cgwd $(DESTDIR)$(BINDIR)/cgwctl
	rm -f $(addprefix $(DESTDIR)$(DATADIR)/profiles/,$(notdir $(wildcard config/profiles/*.yaml)))
	rm -f $(addprefix $(DESTDIR)$(DOCDIR)/,$(notdir $(DOC_FILES))) $(DESTDIR)$(DOCDIR)/examples/cgw.yaml
	rm -f $(addprefix $(DESTDIR)$(DOCDIR)/examples/demo/,$(notdir $(wildcard config/demo/*.yaml)))
	rm -rf $(DESTDIR)$(DOCDIR)/schema
	rm -f $(DESTDIR)$(UNITDIR)/cgwd.service $(DESTDIR)$(SYSUSERSDIR)/cgw.conf $(DESTDIR)$(TMPFILESDIR)/cgw.conf
	for m in $(MAN_FILES); do rm -f $(DESTDIR)$(MANDIR)/man$${m##*.}/$${m##*/}; done
	if [ -f $(DESTDIR)$(SYSCONFDIR)/cgw/cgw.yaml ]; then \
	  if $(SUBST) config/skeleton.yaml | cmp -s - $(DESTDIR)$(SYSCONFDIR)/cgw/cgw.yaml; then \
	    rm -f $(DESTDIR)$(SYSCONFDIR)/cgw/cgw.yaml; \
	  else echo "uninstall: keeping $(DESTDIR)$(SYSCONFDIR)/cgw/cgw.yaml (edited)"; fi; fi
	-rmdir $(DESTDIR)$(DOCDIR)/examples/demo $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR) \
	  $(DESTDIR)$(DATADIR)/profiles $(DESTDIR)$(DATADIR) $(DESTDIR)$(SYSCONFDIR)/cgw 2>/dev/null || true

check-config: $(B)/cgwd
	$(B)/cgwd --check-config -c config/cgw.yaml

format:
	clang-format -i daemon/*.[ch] drivers/*.[ch] tests/*/*.c

clean:
	rm -rf build build-asan build-fuzz
