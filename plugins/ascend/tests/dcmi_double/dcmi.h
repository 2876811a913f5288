/*
 * The part of Huawei's dcmi_interface_api.h that npuagent_ascend.dcmi binds, declared as
 * the real header declares it (official hicann/driver copy; mind-cluster's copy where the two
 * agree), so the test double (libdcmi.c) is compiled against the same types, layouts and
 * signatures the Python binding mirrors. Written from the reference notes
 * (shared/reference/dcmi.md) and the public API documentation; no header file was copied.
 *
 * Only declarations live here. The double's own test hooks (dcmi_double_*) are declared at
 * the end; the real library has none of them.
 */
#ifndef NPUAGENT_DCMI_DOUBLE_H
#define NPUAGENT_DCMI_DOUBLE_H

#ifdef __cplusplus
extern "C" {
#endif

#define DCMIDLLEXPORT

#define MAX_CHIP_NAME_LEN 32
#define DCMI_MAX_EVENT_NAME_LENGTH 256
#define DCMI_MAX_EVENT_DATA_LENGTH 32
#define DCMI_MAX_EVENT_RESV_LENGTH 32

#define DCMI_EVENT_FILTER_FLAG_EVENT_ID (1UL << 0)
#define DCMI_EVENT_FILTER_FLAG_SERVERITY (1UL << 1)
#define DCMI_EVENT_FILTER_FLAG_NODE_TYPE (1UL << 2)

/* ---- return codes ---- */
#define DCMI_OK 0
#define DCMI_ERROR_CODE_BASE (-8000)
#define DCMI_ERR_CODE_INVALID_PARAMETER        (DCMI_ERROR_CODE_BASE - 1)
#define DCMI_ERR_CODE_INNER_ERR                (DCMI_ERROR_CODE_BASE - 5)
#define DCMI_ERR_CODE_INVALID_DEVICE_ID        (DCMI_ERROR_CODE_BASE - 7)
#define DCMI_ERR_CODE_DEVICE_NOT_EXIST         (DCMI_ERROR_CODE_BASE - 8)
#define DCMI_ERR_CODE_NOT_REDAY                (DCMI_ERROR_CODE_BASE - 12)
#define DCMI_ERR_CODE_NOT_SUPPORT_IN_CONTAINER (DCMI_ERROR_CODE_BASE - 13)
#define DCMI_ERR_CODE_RESOURCE_OCCUPIED        (DCMI_ERROR_CODE_BASE - 20)
#define DCMI_ERR_CODE_NOT_SUPPORT              (DCMI_ERROR_CODE_BASE - 255)

/* ---- utilization input_type (official header defines) ---- */
#define DCMI_UTILIZATION_RATE_DDR           1
#define DCMI_UTILIZATION_RATE_AICORE        2
#define DCMI_UTILIZATION_RATE_AICPU         3
#define DCMI_UTILIZATION_RATE_CTRLCPU       4
#define DCMI_UTILIZATION_RATE_DDR_BANDWIDTH 5
#define DCMI_UTILIZATION_RATE_HBM           6
#define DCMI_UTILIZATION_RATE_HBM_BANDWIDTH 10
#define DCMI_UTILIZATION_RATE_VECTORCORE    12
#define DCMI_UTILIZATION_RATE_NPU           13

/* ---- enums ---- */
enum dcmi_unit_type { NPU_TYPE = 0, MCU_TYPE = 1, CPU_TYPE = 2, INVALID_TYPE = 0xFF };
enum dcmi_device_type { DCMI_DEVICE_TYPE_DDR, DCMI_DEVICE_TYPE_SRAM, DCMI_DEVICE_TYPE_HBM,
                        DCMI_DEVICE_TYPE_NPU, DCMI_DEVICE_TYPE_NONE = 0xff };
enum dcmi_freq_type { DCMI_FREQ_DDR = 1, DCMI_FREQ_CTRLCPU = 2, DCMI_FREQ_HBM = 6,
                      DCMI_FREQ_AICORE_CURRENT_ = 7, DCMI_FREQ_AICORE_MAX = 9,
                      DCMI_FREQ_VECTORCORE_CURRENT = 12 };
enum dcmi_rdfx_detect_result { DCMI_RDFX_DETECT_OK = 0, DCMI_RDFX_DETECT_SOCK_FAIL = 1,
    DCMI_RDFX_DETECT_RECV_TIMEOUT = 2, DCMI_RDFX_DETECT_UNREACH = 3, DCMI_RDFX_DETECT_TIME_EXCEEDED = 4,
    DCMI_RDFX_DETECT_FAULT = 5, DCMI_RDFX_DETECT_INIT = 6, DCMI_RDFX_DETECT_THREAD_ERR = 7,
    DCMI_RDFX_DETECT_IP_SET = 8, DCMI_RDFX_DETECT_MAX = 0xFF };
enum dcmi_event_type { DCMI_DMS_FAULT_EVENT = 0, DCMI_EVENT_TYPE_MAX };

/* ---- structs (sizes on LP64 in the comments, as dcmi.md gives them) ---- */
struct dcmi_chip_info {                 /* 100 bytes */
    unsigned char chip_type[MAX_CHIP_NAME_LEN];
    unsigned char chip_name[MAX_CHIP_NAME_LEN];
    unsigned char chip_ver[MAX_CHIP_NAME_LEN];
    unsigned int aicore_cnt;
};

struct dcmi_pcie_info_all {             /* 64 bytes */
    unsigned int venderid;
    unsigned int subvenderid;
    unsigned int deviceid;
    unsigned int subdeviceid;
    int domain;
    unsigned int bdf_busid;
    unsigned int bdf_deviceid;
    unsigned int bdf_funcid;
    unsigned char reserve[32];
};

struct dcmi_ecc_info {                  /* 36 bytes */
    int enable_flag;
    unsigned int single_bit_error_cnt;
    unsigned int double_bit_error_cnt;
    unsigned int total_single_bit_error_cnt;
    unsigned int total_double_bit_error_cnt;
    unsigned int single_bit_isolated_pages_cnt;
    unsigned int double_bit_isolated_pages_cnt;
    unsigned int single_bit_next_isolated_pages_cnt;
    unsigned int double_bit_next_isolated_pages_cnt;
};

struct dcmi_hbm_info {                  /* 32 bytes */
    unsigned long long memory_size;     /* MB */
    unsigned int freq;                  /* MHz */
    unsigned long long memory_usage;    /* MB */
    int temp;                           /* degrees C */
    unsigned int bandwith_util_rate;    /* % (sic) */
};

struct dcmi_get_memory_info_stru {      /* 112 bytes */
    unsigned long long memory_size;      /* MB */
    unsigned long long memory_available; /* MB */
    unsigned int freq;
    unsigned long hugepagesize;          /* KB */
    unsigned long hugepages_total;
    unsigned long hugepages_free;
    unsigned int utiliza;
    unsigned char reserve[60];
};

struct dcmi_memory_info_stru {          /* 16 bytes, V1 */
    unsigned long long memory_size;
    unsigned int freq;
    unsigned int utiliza;
};

struct dcmi_event_filter {              /* 48 bytes */
    unsigned long long filter_flag;
    unsigned int event_id;
    unsigned char severity;
    unsigned char node_type;
    unsigned char resv[DCMI_MAX_EVENT_RESV_LENGTH];
};

struct dcmi_dms_fault_event {           /* 352 bytes */
    unsigned int event_id;
    unsigned short deviceid;            /* the logic id */
    unsigned char node_type;
    unsigned char node_id;
    unsigned char sub_node_type;
    unsigned char sub_node_id;
    unsigned char severity;             /* 0 warning, 1 minor, 2 major, 3 critical */
    unsigned char assertion;            /* 0 recovery, 1 raised, 2 one-off */
    int event_serial_num;
    int notify_serial_num;
    unsigned long long alarm_raised_time;
    char event_name[DCMI_MAX_EVENT_NAME_LENGTH];
    char additional_info[DCMI_MAX_EVENT_DATA_LENGTH];
    unsigned char os_id;
    unsigned char resv[DCMI_MAX_EVENT_RESV_LENGTH - 1];
};

struct dcmi_event {                     /* 360 bytes */
    enum dcmi_event_type type;
    union {
        struct dcmi_dms_fault_event dms_event;
    } event_t;
};

typedef void (*dcmi_fault_event_callback)(struct dcmi_event *event);

/* ---- the functions the binding uses ---- */
DCMIDLLEXPORT int dcmi_init(void);
DCMIDLLEXPORT int dcmi_get_dcmi_version(char *dcmi_ver, unsigned int len);
DCMIDLLEXPORT int dcmi_get_driver_version(char *driver_ver, unsigned int len);
DCMIDLLEXPORT int dcmi_get_card_list(int *card_num, int *card_list, int list_len);
DCMIDLLEXPORT int dcmi_get_device_num_in_card(int card_id, int *device_num);
DCMIDLLEXPORT int dcmi_get_device_id_in_card(int card_id, int *device_id_max, int *mcu_id, int *cpu_id);
DCMIDLLEXPORT int dcmi_get_device_type(int card_id, int device_id, enum dcmi_unit_type *device_type);
DCMIDLLEXPORT int dcmi_get_device_logic_id(int *device_logic_id, int card_id, int device_id);
DCMIDLLEXPORT int dcmi_get_device_phyid_from_logicid(unsigned int logicid, unsigned int *phyid);
DCMIDLLEXPORT int dcmi_get_device_chip_info(int card_id, int device_id, struct dcmi_chip_info *chip_info);
DCMIDLLEXPORT int dcmi_get_device_pcie_info_v2(int card_id, int device_id, struct dcmi_pcie_info_all *pcie_info);
DCMIDLLEXPORT int dcmi_get_device_health(int card_id, int device_id, unsigned int *health);
DCMIDLLEXPORT int dcmi_get_device_errorcode_v2(int card_id, int device_id, int *error_count,
                                               unsigned int *error_code_list, unsigned int list_len);
DCMIDLLEXPORT int dcmi_get_device_temperature(int card_id, int device_id, int *temperature);
DCMIDLLEXPORT int dcmi_get_device_power_info(int card_id, int device_id, int *power);
DCMIDLLEXPORT int dcmi_get_device_utilization_rate(int card_id, int device_id, int input_type,
                                                   unsigned int *utilization_rate);
DCMIDLLEXPORT int dcmi_get_device_frequency(int card_id, int device_id, enum dcmi_freq_type input_type,
                                            unsigned int *frequency);
DCMIDLLEXPORT int dcmi_get_device_hbm_info(int card_id, int device_id, struct dcmi_hbm_info *hbm_info);
DCMIDLLEXPORT int dcmi_get_device_memory_info_v3(int card_id, int device_id,
                                                 struct dcmi_get_memory_info_stru *memory_info);
DCMIDLLEXPORT int dcmi_get_memory_info(int card_id, int device_id, struct dcmi_memory_info_stru *device_memory_info);
DCMIDLLEXPORT int dcmi_get_device_ecc_info(int card_id, int device_id, enum dcmi_device_type input_type,
                                           struct dcmi_ecc_info *device_ecc_info);
DCMIDLLEXPORT int dcmi_get_device_network_health(int card_id, int device_id, enum dcmi_rdfx_detect_result *result);
DCMIDLLEXPORT int dcmi_subscribe_fault_event(int card_id, int device_id, struct dcmi_event_filter filter,
                                             dcmi_fault_event_callback handler);

/* ---- test hooks of the double only (not in any real libdcmi.so) ---- */
/* how many times `name` was called since load */
int dcmi_double_calls(const char *name);
/* read the script again (it is otherwise read once, by the first dcmi_init that succeeds) */
int dcmi_double_reload(void);
/* how many times two DCMI calls overlapped (the binding must keep this at 0) */
int dcmi_double_overlaps(void);
/* sizeof / offsetof of the structs above as this compiler lays them out, -1 when unknown */
long dcmi_double_sizeof(const char *struct_name);
long dcmi_double_offsetof(const char *struct_name, const char *field);
/* the last filter dcmi_subscribe_fault_event was given, and its card and device ids */
int dcmi_double_last_subscription(int *card_id, int *device_id, struct dcmi_event_filter *filter);

#ifdef __cplusplus
}
#endif

#endif /* NPUAGENT_DCMI_DOUBLE_H */
