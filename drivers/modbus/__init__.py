"""Modbus TCP driver: config models, read planner, decoder and driver.

The simulator (``drivers.modbus.simulator``) is not imported here: it pulls in
pymodbus's server, which the daemon does not need.
"""

from .config import DataType, ModbusTag, ModbusTcpDevice, Order, Table, load_device_map
from .decode import DecodeError, decode_value, encode_value
from .driver import ModbusTcpDriver
from .plan import ReadPlan, Request, compile_plan, describe_plan

PROTOCOL = "modbus_tcp"
DeviceConfig = ModbusTcpDevice

__all__ = [
    "PROTOCOL",
    "DataType",
    "DecodeError",
    "DeviceConfig",
    "ModbusTag",
    "ModbusTcpDevice",
    "ModbusTcpDriver",
    "Order",
    "ReadPlan",
    "Request",
    "Table",
    "compile_plan",
    "decode_value",
    "describe_plan",
    "encode_value",
    "load_device_map",
]
