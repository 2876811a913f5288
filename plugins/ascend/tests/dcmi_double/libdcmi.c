/*
 * A test double of Huawei's libdcmi.so: the functions npuagent_ascend.dcmi binds, with the
 * signatures of dcmi.h, answering from a script instead of from a device.
 *
 *     gcc -shared -fPIC -pthread -o libdcmi.so libdcmi.c
 *
 * The script is read by dcmi_init() from the file named by $DCMI_DOUBLE_SCRIPT: one
 * `key = value` per line, `#` starts a comment. Numbers may be decimal or 0x-hex.
 *
 *   cards = 1792, 5, 9            card ids, in the order dcmi_get_card_list gives them
 *   chips = 1                     NPU chips per card (default 1)
 *   card.<card>.chips = 2         ... for one card
 *   card.<card>.mcu = 1           the card also has an MCU (device id = its chip count)
 *   dcmi_version = 24.1.rc2       dcmi_get_dcmi_version (absent: -8255)
 *   driver_version = 24.1.rc2     dcmi_get_driver_version (absent: -8255)
 *
 *   Per chip, `chip.<card>.<dev>.<field>`, falling back to `default.<field>`. A reading
 *   whose field is absent (or `-`) answers -8255 (not supported), as a chip without it does:
 *   logic, phy                    ids (defaults: the enumeration index, and the logic id)
 *   chip_type, name, chip_ver, aicore_cnt   dcmi_get_device_chip_info (defaults Ascend, 910B3, V1, 20)
 *   pcie = vendor, subvendor, device, subdevice, domain, bus, dev, func
 *   temperature                   degrees C
 *   power                         0.1 W (1624 = 162.4 W)
 *   health                        0 OK, 1 minor, 2 major, 3 critical, 0xffffffff unknown
 *   errors = 0x80E01801, ...      dcmi_get_device_errorcode_v2 (absent: no error)
 *   util.<type>                   dcmi_get_device_utilization_rate input_type (2, 3, 6, 10, 12, 13, 1 ...)
 *   freq.<type>                   dcmi_get_device_frequency input_type (7 = AI core current)
 *   hbm = size_mb, freq, usage_mb, temp, bandwidth_util
 *   mem = size_mb, available_mb, freq, hugepagesize_kb, hugepages_total, hugepages_free, util
 *   mem_v1 = size_mb, freq, util  dcmi_get_memory_info (V1)
 *   ecc.<device_type> = enable, single, double, total_single, total_double,
 *                       single_pages, double_pages, next_single_pages, next_double_pages
 *   network                       enum dcmi_rdfx_detect_result
 *
 *   Failures and stalls:
 *   fail.<function> = -8005                 every call of <function> returns that code
 *   fail.<function>.<card> = ...            ... for one card
 *   fail.<function>.<card>.<dev> = -8012    ... for one chip
 *   block.<function> = 1500                 the call sleeps 1500 ms before answering
 *   block.<function>.times = 1              ... only the first N calls (default 1; 0 = always)
 *
 *   Fault events, delivered by dcmi_subscribe_fault_event's own thread through the handler:
 *   event.<i>.code = 0x80E01801   i = 1..8, delivered in order
 *   event.<i>.card, event.<i>.chip   the chip (its logic id goes in deviceid), or event.<i>.logic
 *   event.<i>.severity, event.<i>.assertion, event.<i>.name, event.<i>.info
 *   event.<i>.delay_ms = 200      after subscribing
 *
 * Compile with -DOMIT_<FUNCTION> (upper case, e.g. -DOMIT_DCMI_SUBSCRIBE_FAULT_EVENT) to
 * leave a function out of the library, as an older driver would.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dcmi.h"

#define MAX_ENTRIES 1024
#define MAX_KEY 128
#define MAX_VAL 512
#define MAX_CARDS 64
#define MAX_CHIPS 512
#define MAX_FUNCS 64
#define MAX_EVENTS 8

static char g_keys[MAX_ENTRIES][MAX_KEY];
static char g_vals[MAX_ENTRIES][MAX_VAL];
static int g_nentries;

struct chip { int card; int dev; int logic; int phy; };
static int g_cards[MAX_CARDS];
static int g_card_chips[MAX_CARDS];
static int g_card_mcu[MAX_CARDS];
static int g_ncards;
static struct chip g_chips[MAX_CHIPS];
static int g_nchips;
static int g_inited;

struct func_stat { char name[64]; int calls; int blocked; };
static struct func_stat g_funcs[MAX_FUNCS];
static int g_nfuncs;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_inflight;
static int g_overlaps;

static dcmi_fault_event_callback g_handler;
static struct dcmi_event_filter g_filter;
static int g_sub_card = -2, g_sub_dev = -2;

/* ---------------------------------------------------------------- script */

static char *strip(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) e--;
    *e = '\0';
    return s;
}

static void load_script(void)
{
    const char *path = getenv("DCMI_DOUBLE_SCRIPT");
    g_nentries = 0;
    if (path == NULL) return;
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    char line[MAX_KEY + MAX_VAL + 8];
    while (fgets(line, sizeof line, f) != NULL && g_nentries < MAX_ENTRIES) {
        char *hash = strchr(line, '#');
        if (hash != NULL) *hash = '\0';
        char *eq = strchr(line, '=');
        if (eq == NULL) continue;
        *eq = '\0';
        char *k = strip(line), *v = strip(eq + 1);
        if (*k == '\0') continue;
        snprintf(g_keys[g_nentries], MAX_KEY, "%s", k);
        snprintf(g_vals[g_nentries], MAX_VAL, "%s", v);
        g_nentries++;
    }
    fclose(f);
}

static const char *cfg(const char *key)
{
    for (int i = g_nentries - 1; i >= 0; i--)  /* the last assignment wins */
        if (strcmp(g_keys[i], key) == 0) return g_vals[i];
    return NULL;
}

static long long to_ll(const char *s) { return strtoll(s, NULL, 0); }

static long long cfg_ll(const char *key, long long dflt)
{
    const char *v = cfg(key);
    return v == NULL ? dflt : to_ll(v);
}

static const char *chip_cfg(int card, int dev, const char *field)
{
    char key[MAX_KEY];
    snprintf(key, sizeof key, "chip.%d.%d.%s", card, dev, field);
    const char *v = cfg(key);
    if (v == NULL) {
        snprintf(key, sizeof key, "default.%s", field);
        v = cfg(key);
    }
    return (v != NULL && strcmp(v, "-") == 0) ? NULL : v;  /* "-": the chip does not have it */
}

/* parse up to n comma-separated numbers; returns how many were there */
static int numbers(const char *s, unsigned long long *out, int n)
{
    int i = 0;
    while (s != NULL && *s != '\0' && i < n) {
        char *end;
        out[i++] = (unsigned long long)strtoll(s, &end, 0);
        s = strchr(end, ',');
        if (s != NULL) s++;
    }
    return i;
}

static void build_topology(void)
{
    unsigned long long ids[MAX_CARDS];
    g_ncards = numbers(cfg("cards"), ids, MAX_CARDS);
    g_nchips = 0;
    long long per_card = cfg_ll("chips", 1);
    for (int c = 0; c < g_ncards; c++) {
        char key[MAX_KEY];
        g_cards[c] = (int)ids[c];
        snprintf(key, sizeof key, "card.%d.chips", g_cards[c]);
        g_card_chips[c] = (int)cfg_ll(key, per_card);
        snprintf(key, sizeof key, "card.%d.mcu", g_cards[c]);
        g_card_mcu[c] = (int)cfg_ll(key, 0);
        for (int d = 0; d < g_card_chips[c] && g_nchips < MAX_CHIPS; d++) {
            struct chip *ch = &g_chips[g_nchips];
            const char *v;
            ch->card = g_cards[c];
            ch->dev = d;
            v = chip_cfg(ch->card, d, "logic");
            ch->logic = v != NULL ? (int)to_ll(v) : g_nchips;
            v = chip_cfg(ch->card, d, "phy");
            ch->phy = v != NULL ? (int)to_ll(v) : ch->logic;
            g_nchips++;
        }
    }
}

static int card_index(int card)
{
    for (int c = 0; c < g_ncards; c++)
        if (g_cards[c] == card) return c;
    return -1;
}

static struct chip *find_chip(int card, int dev)
{
    for (int i = 0; i < g_nchips; i++)
        if (g_chips[i].card == card && g_chips[i].dev == dev) return &g_chips[i];
    return NULL;
}

/* ---------------------------------------------------------------- call accounting */

static struct func_stat *stat_of(const char *name)
{
    for (int i = 0; i < g_nfuncs; i++)
        if (strcmp(g_funcs[i].name, name) == 0) return &g_funcs[i];
    if (g_nfuncs == MAX_FUNCS) return NULL;
    snprintf(g_funcs[g_nfuncs].name, sizeof g_funcs[0].name, "%s", name);
    return &g_funcs[g_nfuncs++];
}

static void sleep_ms(long long ms)
{
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) {}
}

enum check { CHECK_NONE, CHECK_CARD, CHECK_CHIP };

/*
 * Every function starts here: count the call, notice overlapping calls, sleep if scripted,
 * then answer -8012 before dcmi_init, the scripted failure, or -8007 for ids that do not exist.
 */
static int enter(const char *name, int card, int dev, enum check check)
{
    char key[MAX_KEY];
    int block_now = 0;
    long long ms;

    if (__atomic_add_fetch(&g_inflight, 1, __ATOMIC_SEQ_CST) > 1)
        __atomic_add_fetch(&g_overlaps, 1, __ATOMIC_SEQ_CST);
    snprintf(key, sizeof key, "block.%s", name);
    ms = cfg_ll(key, 0);
    pthread_mutex_lock(&g_lock);
    struct func_stat *st = stat_of(name);
    if (st != NULL) {
        st->calls++;
        if (ms > 0) {
            snprintf(key, sizeof key, "block.%s.times", name);
            long long times = cfg_ll(key, 1);
            if (times == 0 || st->blocked < times) {
                st->blocked++;
                block_now = 1;
            }
        }
    }
    pthread_mutex_unlock(&g_lock);
    if (block_now) sleep_ms(ms);

    if (!g_inited && strcmp(name, "dcmi_init") != 0) return DCMI_ERR_CODE_NOT_REDAY;
    if (check == CHECK_CHIP) {
        snprintf(key, sizeof key, "fail.%s.%d.%d", name, card, dev);
        if (cfg(key) != NULL) return (int)cfg_ll(key, 0);
    }
    if (check != CHECK_NONE) {
        snprintf(key, sizeof key, "fail.%s.%d", name, card);
        if (cfg(key) != NULL) return (int)cfg_ll(key, 0);
    }
    snprintf(key, sizeof key, "fail.%s", name);
    if (cfg(key) != NULL) return (int)cfg_ll(key, 0);
    if (check == CHECK_CARD && card_index(card) < 0) return DCMI_ERR_CODE_INVALID_DEVICE_ID;
    if (check == CHECK_CHIP && find_chip(card, dev) == NULL) return DCMI_ERR_CODE_INVALID_DEVICE_ID;
    return DCMI_OK;
}

static int leave(int rc)
{
    __atomic_sub_fetch(&g_inflight, 1, __ATOMIC_SEQ_CST);
    return rc;
}

#define ENTER(card, dev, check)                            \
    do {                                                   \
        int rc_ = enter(__func__, (card), (dev), (check)); \
        if (rc_ != DCMI_OK) return leave(rc_);             \
    } while (0)

/* a field of the chip, or -8255 from the calling function when the chip does not have it */
#define FIELD(var, card, dev, field)                                 \
    const char *var = chip_cfg((card), (dev), (field));              \
    if (var == NULL) return leave(DCMI_ERR_CODE_NOT_SUPPORT)

/* ---------------------------------------------------------------- the API */

int dcmi_init(void)
{
    pthread_mutex_lock(&g_lock);
    if (!g_inited) load_script();
    pthread_mutex_unlock(&g_lock);
    ENTER(0, 0, CHECK_NONE);
    if (!g_inited) {
        build_topology();
        g_inited = 1;
    }
    return leave(DCMI_OK);
}

static int version(const char *key, char *buf, unsigned int len)
{
    const char *v = cfg(key);
    if (buf == NULL || len == 0) return DCMI_ERR_CODE_INVALID_PARAMETER;
    if (v == NULL) return DCMI_ERR_CODE_NOT_SUPPORT;
    snprintf(buf, len, "%s", v);
    return DCMI_OK;
}

int dcmi_get_dcmi_version(char *dcmi_ver, unsigned int len)
{
    ENTER(0, 0, CHECK_NONE);
    return leave(version("dcmi_version", dcmi_ver, len));
}

#ifndef OMIT_DCMI_GET_DRIVER_VERSION
int dcmi_get_driver_version(char *driver_ver, unsigned int len)
{
    ENTER(0, 0, CHECK_NONE);
    return leave(version("driver_version", driver_ver, len));
}
#endif

int dcmi_get_card_list(int *card_num, int *card_list, int list_len)
{
    ENTER(0, 0, CHECK_NONE);
    if (card_num == NULL || card_list == NULL || list_len < g_ncards) return leave(DCMI_ERR_CODE_INVALID_PARAMETER);
    for (int c = 0; c < g_ncards; c++) card_list[c] = g_cards[c];
    *card_num = g_ncards;
    return leave(DCMI_OK);
}

int dcmi_get_device_num_in_card(int card_id, int *device_num)
{
    ENTER(card_id, 0, CHECK_CARD);
    int c = card_index(card_id);
    *device_num = g_card_chips[c] + (g_card_mcu[c] ? 1 : 0);  /* the count includes the MCU */
    return leave(DCMI_OK);
}

#ifndef OMIT_DCMI_GET_DEVICE_ID_IN_CARD
int dcmi_get_device_id_in_card(int card_id, int *device_id_max, int *mcu_id, int *cpu_id)
{
    ENTER(card_id, 0, CHECK_CARD);
    int c = card_index(card_id);
    *device_id_max = g_card_chips[c];
    *mcu_id = g_card_mcu[c] ? g_card_chips[c] : -1;
    *cpu_id = -1;
    return leave(DCMI_OK);
}
#endif

int dcmi_get_device_type(int card_id, int device_id, enum dcmi_unit_type *device_type)
{
    ENTER(card_id, 0, CHECK_CARD);
    int c = card_index(card_id);
    if (device_id >= 0 && device_id < g_card_chips[c]) *device_type = NPU_TYPE;
    else if (g_card_mcu[c] && device_id == g_card_chips[c]) *device_type = MCU_TYPE;
    else return leave(DCMI_ERR_CODE_INVALID_DEVICE_ID);
    return leave(DCMI_OK);
}

int dcmi_get_device_logic_id(int *device_logic_id, int card_id, int device_id)
{
    ENTER(card_id, device_id, CHECK_CHIP);
    *device_logic_id = find_chip(card_id, device_id)->logic;
    return leave(DCMI_OK);
}

#ifndef OMIT_DCMI_GET_DEVICE_PHYID_FROM_LOGICID
int dcmi_get_device_phyid_from_logicid(unsigned int logicid, unsigned int *phyid)
{
    ENTER(0, 0, CHECK_NONE);
    for (int i = 0; i < g_nchips; i++) {
        if ((unsigned int)g_chips[i].logic == logicid) {
            *phyid = (unsigned int)g_chips[i].phy;
            return leave(DCMI_OK);
        }
    }
    return leave(DCMI_ERR_CODE_INVALID_DEVICE_ID);
}
#endif

int dcmi_get_device_chip_info(int card_id, int device_id, struct dcmi_chip_info *chip_info)
{
    ENTER(card_id, device_id, CHECK_CHIP);
    const char *v;
    memset(chip_info, 0, sizeof *chip_info);
    v = chip_cfg(card_id, device_id, "chip_type");
    snprintf((char *)chip_info->chip_type, MAX_CHIP_NAME_LEN, "%s", v ? v : "Ascend");
    v = chip_cfg(card_id, device_id, "name");
    snprintf((char *)chip_info->chip_name, MAX_CHIP_NAME_LEN, "%s", v ? v : "910B3");
    v = chip_cfg(card_id, device_id, "chip_ver");
    snprintf((char *)chip_info->chip_ver, MAX_CHIP_NAME_LEN, "%s", v ? v : "V1");
    v = chip_cfg(card_id, device_id, "aicore_cnt");
    chip_info->aicore_cnt = v ? (unsigned int)to_ll(v) : 20;
    return leave(DCMI_OK);
}

int dcmi_get_device_pcie_info_v2(int card_id, int device_id, struct dcmi_pcie_info_all *pcie_info)
{
    ENTER(card_id, device_id, CHECK_CHIP);
    FIELD(v, card_id, device_id, "pcie");
    unsigned long long n[8] = {0};
    numbers(v, n, 8);
    memset(pcie_info, 0, sizeof *pcie_info);
    pcie_info->venderid = (unsigned int)n[0];
    pcie_info->subvenderid = (unsigned int)n[1];
    pcie_info->deviceid = (unsigned int)n[2];
    pcie_info->subdeviceid = (unsigned int)n[3];
    pcie_info->domain = (int)n[4];
    pcie_info->bdf_busid = (unsigned int)n[5];
    pcie_info->bdf_deviceid = (unsigned int)n[6];
    pcie_info->bdf_funcid = (unsigned int)n[7];
    return leave(DCMI_OK);
}

int dcmi_get_device_health(int card_id, int device_id, unsigned int *health)
{
    ENTER(card_id, device_id, CHECK_CHIP);
    FIELD(v, card_id, device_id, "health");
    *health = (unsigned int)strtoull(v, NULL, 0);
    return leave(DCMI_OK);
}

int dcmi_get_device_errorcode_v2(int card_id, int device_id, int *error_count,
                                 unsigned int *error_code_list, unsigned int list_len)
{
    ENTER(card_id, device_id, CHECK_CHIP);
    unsigned long long codes[128];
    int n = numbers(chip_cfg(card_id, device_id, "errors"), codes, 128);
    if ((unsigned int)n > list_len) n = (int)list_len;
    for (int i = 0; i < n; i++) error_code_list[i] = (unsigned int)codes[i];
    *error_count = n;
    return leave(DCMI_OK);
}

int dcmi_get_device_temperature(int card_id, int device_id, int *temperature)
{
    ENTER(card_id, device_id, CHECK_CHIP);
    FIELD(v, card_id, device_id, "temperature");
    *temperature = (int)to_ll(v);
    return leave(DCMI_OK);
}

int dcmi_get_device_power_info(int card_id, int device_id, int *power)
{
    ENTER(card_id, device_id, CHECK_CHIP);
    FIELD(v, card_id, device_id, "power");
    *power = (int)to_ll(v);
    return leave(DCMI_OK);
}

int dcmi_get_device_utilization_rate(int card_id, int device_id, int input_type, unsigned int *utilization_rate)
{
    char field[32];
    ENTER(card_id, device_id, CHECK_CHIP);
    snprintf(field, sizeof field, "util.%d", input_type);
    FIELD(v, card_id, device_id, field);
    *utilization_rate = (unsigned int)to_ll(v);
    return leave(DCMI_OK);
}

int dcmi_get_device_frequency(int card_id, int device_id, enum dcmi_freq_type input_type, unsigned int *frequency)
{
    char field[32];
    ENTER(card_id, device_id, CHECK_CHIP);
    snprintf(field, sizeof field, "freq.%d", (int)input_type);
    FIELD(v, card_id, device_id, field);
    *frequency = (unsigned int)to_ll(v);
    return leave(DCMI_OK);
}

#ifndef OMIT_DCMI_GET_DEVICE_HBM_INFO
int dcmi_get_device_hbm_info(int card_id, int device_id, struct dcmi_hbm_info *hbm_info)
{
    ENTER(card_id, device_id, CHECK_CHIP);
    FIELD(v, card_id, device_id, "hbm");
    unsigned long long n[5] = {0};
    numbers(v, n, 5);
    memset(hbm_info, 0, sizeof *hbm_info);
    hbm_info->memory_size = n[0];
    hbm_info->freq = (unsigned int)n[1];
    hbm_info->memory_usage = n[2];
    hbm_info->temp = (int)n[3];
    hbm_info->bandwith_util_rate = (unsigned int)n[4];
    return leave(DCMI_OK);
}
#endif

#ifndef OMIT_DCMI_GET_DEVICE_MEMORY_INFO_V3
int dcmi_get_device_memory_info_v3(int card_id, int device_id, struct dcmi_get_memory_info_stru *memory_info)
{
    ENTER(card_id, device_id, CHECK_CHIP);
    FIELD(v, card_id, device_id, "mem");
    unsigned long long n[7] = {0};
    numbers(v, n, 7);
    memset(memory_info, 0, sizeof *memory_info);
    memory_info->memory_size = n[0];
    memory_info->memory_available = n[1];
    memory_info->freq = (unsigned int)n[2];
    memory_info->hugepagesize = (unsigned long)n[3];
    memory_info->hugepages_total = (unsigned long)n[4];
    memory_info->hugepages_free = (unsigned long)n[5];
    memory_info->utiliza = (unsigned int)n[6];
    return leave(DCMI_OK);
}
#endif

int dcmi_get_memory_info(int card_id, int device_id, struct dcmi_memory_info_stru *device_memory_info)
{
    ENTER(card_id, device_id, CHECK_CHIP);
    FIELD(v, card_id, device_id, "mem_v1");
    unsigned long long n[3] = {0};
    numbers(v, n, 3);
    device_memory_info->memory_size = n[0];
    device_memory_info->freq = (unsigned int)n[1];
    device_memory_info->utiliza = (unsigned int)n[2];
    return leave(DCMI_OK);
}

int dcmi_get_device_ecc_info(int card_id, int device_id, enum dcmi_device_type input_type,
                             struct dcmi_ecc_info *device_ecc_info)
{
    char field[32];
    ENTER(card_id, device_id, CHECK_CHIP);
    snprintf(field, sizeof field, "ecc.%d", (int)input_type);
    FIELD(v, card_id, device_id, field);
    unsigned long long n[9] = {0};
    numbers(v, n, 9);
    device_ecc_info->enable_flag = (int)n[0];
    device_ecc_info->single_bit_error_cnt = (unsigned int)n[1];
    device_ecc_info->double_bit_error_cnt = (unsigned int)n[2];
    device_ecc_info->total_single_bit_error_cnt = (unsigned int)n[3];
    device_ecc_info->total_double_bit_error_cnt = (unsigned int)n[4];
    device_ecc_info->single_bit_isolated_pages_cnt = (unsigned int)n[5];
    device_ecc_info->double_bit_isolated_pages_cnt = (unsigned int)n[6];
    device_ecc_info->single_bit_next_isolated_pages_cnt = (unsigned int)n[7];
    device_ecc_info->double_bit_next_isolated_pages_cnt = (unsigned int)n[8];
    return leave(DCMI_OK);
}

#ifndef OMIT_DCMI_GET_DEVICE_NETWORK_HEALTH
int dcmi_get_device_network_health(int card_id, int device_id, enum dcmi_rdfx_detect_result *result)
{
    ENTER(card_id, device_id, CHECK_CHIP);
    FIELD(v, card_id, device_id, "network");
    *result = (enum dcmi_rdfx_detect_result)to_ll(v);
    return leave(DCMI_OK);
}
#endif

/* ---------------------------------------------------------------- fault events */

#ifndef OMIT_DCMI_SUBSCRIBE_FAULT_EVENT
static void *deliver_events(void *arg)
{
    dcmi_fault_event_callback handler = (dcmi_fault_event_callback)arg;
    long long waited = 0;
    for (int i = 1; i <= MAX_EVENTS; i++) {
        char key[MAX_KEY];
        const char *v;
        struct dcmi_event ev;
        snprintf(key, sizeof key, "event.%d.code", i);
        if (cfg(key) == NULL) break;
        memset(&ev, 0, sizeof ev);
        ev.type = DCMI_DMS_FAULT_EVENT;
        ev.event_t.dms_event.event_id = (unsigned int)cfg_ll(key, 0);
        snprintf(key, sizeof key, "event.%d.logic", i);
        if (cfg(key) != NULL) {
            ev.event_t.dms_event.deviceid = (unsigned short)cfg_ll(key, 0);
        } else {
            char kc[MAX_KEY], kd[MAX_KEY];
            snprintf(kc, sizeof kc, "event.%d.card", i);
            snprintf(kd, sizeof kd, "event.%d.chip", i);
            struct chip *ch = find_chip((int)cfg_ll(kc, 0), (int)cfg_ll(kd, 0));
            ev.event_t.dms_event.deviceid = (unsigned short)(ch != NULL ? ch->logic : 0xffff);
        }
        snprintf(key, sizeof key, "event.%d.severity", i);
        ev.event_t.dms_event.severity = (unsigned char)cfg_ll(key, 2);
        snprintf(key, sizeof key, "event.%d.assertion", i);
        ev.event_t.dms_event.assertion = (unsigned char)cfg_ll(key, 1);
        ev.event_t.dms_event.event_serial_num = i;
        ev.event_t.dms_event.notify_serial_num = i;
        ev.event_t.dms_event.alarm_raised_time = (unsigned long long)time(NULL) * 1000ULL;
        snprintf(key, sizeof key, "event.%d.name", i);
        v = cfg(key);
        snprintf(ev.event_t.dms_event.event_name, DCMI_MAX_EVENT_NAME_LENGTH, "%s", v ? v : "");
        snprintf(key, sizeof key, "event.%d.info", i);
        v = cfg(key);
        snprintf(ev.event_t.dms_event.additional_info, DCMI_MAX_EVENT_DATA_LENGTH, "%s", v ? v : "");
        snprintf(key, sizeof key, "event.%d.delay_ms", i);
        long long delay = cfg_ll(key, 100);
        if (delay > waited) {
            sleep_ms(delay - waited);
            waited = delay;
        }
        handler(&ev);
    }
    return NULL;
}

int dcmi_subscribe_fault_event(int card_id, int device_id, struct dcmi_event_filter filter,
                               dcmi_fault_event_callback handler)
{
    pthread_t thread;
    pthread_attr_t attr;
    ENTER(card_id, device_id, CHECK_NONE);
    if (handler == NULL) return leave(DCMI_ERR_CODE_INVALID_PARAMETER);
    if (!(card_id == -1 && device_id == -1) && find_chip(card_id, device_id) == NULL)
        return leave(DCMI_ERR_CODE_INVALID_DEVICE_ID);
    g_handler = handler;
    g_filter = filter;
    g_sub_card = card_id;
    g_sub_dev = device_id;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&thread, &attr, deliver_events, (void *)handler);
    pthread_attr_destroy(&attr);
    return leave(rc == 0 ? DCMI_OK : DCMI_ERR_CODE_INNER_ERR);
}
#endif

/* ---------------------------------------------------------------- test hooks */

int dcmi_double_calls(const char *name)
{
    int n = 0;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_nfuncs; i++)
        if (strcmp(g_funcs[i].name, name) == 0) n = g_funcs[i].calls;
    pthread_mutex_unlock(&g_lock);
    return n;
}

int dcmi_double_reload(void)
{
    pthread_mutex_lock(&g_lock);
    load_script();
    build_topology();
    pthread_mutex_unlock(&g_lock);
    return 0;
}

int dcmi_double_overlaps(void) { return __atomic_load_n(&g_overlaps, __ATOMIC_SEQ_CST); }

int dcmi_double_last_subscription(int *card_id, int *device_id, struct dcmi_event_filter *filter)
{
    if (g_handler == NULL) return -1;
    *card_id = g_sub_card;
    *device_id = g_sub_dev;
    *filter = g_filter;
    return 0;
}

#define SIZE(s) if (strcmp(name, #s) == 0) return (long)sizeof(struct s)
long dcmi_double_sizeof(const char *name)
{
    SIZE(dcmi_chip_info);
    SIZE(dcmi_pcie_info_all);
    SIZE(dcmi_ecc_info);
    SIZE(dcmi_hbm_info);
    SIZE(dcmi_get_memory_info_stru);
    SIZE(dcmi_memory_info_stru);
    SIZE(dcmi_event_filter);
    SIZE(dcmi_dms_fault_event);
    SIZE(dcmi_event);
    return -1;
}

#define OFFSET(s, f) if (strcmp(name, #s) == 0 && strcmp(field, #f) == 0) return (long)offsetof(struct s, f)
long dcmi_double_offsetof(const char *name, const char *field)
{
    OFFSET(dcmi_chip_info, aicore_cnt);
    OFFSET(dcmi_pcie_info_all, bdf_funcid);
    OFFSET(dcmi_ecc_info, double_bit_next_isolated_pages_cnt);
    OFFSET(dcmi_hbm_info, freq);
    OFFSET(dcmi_hbm_info, memory_usage);
    OFFSET(dcmi_hbm_info, temp);
    OFFSET(dcmi_hbm_info, bandwith_util_rate);
    OFFSET(dcmi_get_memory_info_stru, freq);
    OFFSET(dcmi_get_memory_info_stru, hugepagesize);
    OFFSET(dcmi_get_memory_info_stru, hugepages_free);
    OFFSET(dcmi_get_memory_info_stru, utiliza);
    OFFSET(dcmi_get_memory_info_stru, reserve);
    OFFSET(dcmi_memory_info_stru, utiliza);
    OFFSET(dcmi_event_filter, event_id);
    OFFSET(dcmi_event_filter, severity);
    OFFSET(dcmi_event_filter, resv);
    OFFSET(dcmi_dms_fault_event, deviceid);
    OFFSET(dcmi_dms_fault_event, severity);
    OFFSET(dcmi_dms_fault_event, assertion);
    OFFSET(dcmi_dms_fault_event, alarm_raised_time);
    OFFSET(dcmi_dms_fault_event, event_name);
    OFFSET(dcmi_dms_fault_event, additional_info);
    OFFSET(dcmi_dms_fault_event, os_id);
    OFFSET(dcmi_event, event_t);
    return -1;
}
