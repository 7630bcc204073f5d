module tcplab/bench/peers

go 1.16
