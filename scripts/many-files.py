"""Many files on one agent: N one-line files under one glob, `from: beginning`.

    python3 scripts/many-files.py N AGENT_BINARY [IDLE_SECS] [AGENT_YAML_EXTRA]

Starts tansu (from scripts/lib.sh's cache) and the agent, prints time until every
line was acknowledged, RSS, threads, descriptors, inotify watches, files polled; then
idle CPU per second (and per thread kind), then append-to-read time for 10 lines
(polled through /metrics, whose size grows with N). Prints JSON lines."""
import os, sys, time, subprocess, socket, shutil, json, re
N=int(sys.argv[1]); agent=sys.argv[2]; idle=int(sys.argv[3]) if len(sys.argv)>3 else 20
extra=sys.argv[4] if len(sys.argv)>4 else ""
tansu=os.path.expanduser("~/.cache/logagent/tansu-0.6.0/bin/tansu")
w="/tmp/many-%d"%os.getpid(); os.makedirs(w+"/logs")
s=socket.socket(); s.bind(("127.0.0.1",0)); port=s.getsockname()[1]; s.close()
s=socket.socket(); s.bind(("127.0.0.1",0)); mport=s.getsockname()[1]; s.close()
b=subprocess.Popen([tansu,"broker","--listener-url","tcp://127.0.0.1:%d"%port,"--advertised-listener-url","tcp://127.0.0.1:%d"%port,"--storage-engine","memory://tansu/"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
for i in range(150):
    try: socket.create_connection(("127.0.0.1",port)).close(); break
    except OSError: time.sleep(0.2)
subprocess.run([tansu,"topic","create","m","--broker","tcp://127.0.0.1:%d"%port,"--partitions","1"],check=True,stdout=subprocess.DEVNULL)
for i in range(N):
    with open(w+"/logs/f%05d.log"%i,"w") as f: f.write("line of f%05d\n"%i)
open(w+"/agent.yaml","w").write("kafka:\n  brokers: [\"127.0.0.1:%d\"]\nagent:\n  data_dir: %s/data\n  metrics_addr: 127.0.0.1:%d\n%scollect:\n  - {path: \"%s/logs/*.log\", topic: m, from: beginning}\n"%(port,w,mport,extra,w))
t0=time.time()
a=subprocess.Popen([agent,"run","-c",w+"/agent.yaml"],stderr=open(w+"/agent.log","w"))
def metric(name):
    try:
        import urllib.request
        t=urllib.request.urlopen("http://127.0.0.1:%d/metrics"%mport,timeout=2).read().decode()
        tot=0
        for l in t.splitlines():
            if l.startswith(name): tot+=float(l.split()[-1])
        return tot
    except Exception: return -1
def ps():
    st=open("/proc/%d/status"%a.pid).read()
    rss=int(re.search(r"VmRSS:\s+(\d+)",st).group(1)); th=int(re.search(r"Threads:\s+(\d+)",st).group(1))
    fds=len(os.listdir("/proc/%d/fd"%a.pid)); return rss,th,fds
def cpu():
    f=open("/proc/%d/stat"%a.pid).read().rsplit(")",1)[1].split(); return (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
# all followed: lines acked = N
for i in range(1200):
    if metric("logagent_lines_acked_total")>=N: break
    time.sleep(0.1)
tf=time.time()-t0
rss,th,fds=ps()
print(json.dumps({"files":N,"all_shipped_s":round(tf,2),"rss_mb":rss/1024,"threads":th,"fds":fds,"watches":metric("logagent_inotify_watches"),"polled":metric("logagent_files_polled")}))
time.sleep(5)
c0=cpu(); subprocess.run(["python3",os.path.join(os.path.dirname(os.path.abspath(__file__)),"thread-cpu.py"),str(a.pid),str(idle)]); c1=cpu()
rss,th,fds=ps()
print(json.dumps({"idle_cpu_s_per_s":round((c1-c0)/idle,4),"rss_mb_idle":rss/1024}))
# latency: write to a few files, wait for acked to grow
lat=[]
for k in range(10):
    base=metric("logagent_lines_read_total")
    t=time.time()
    with open(w+"/logs/f%05d.log"%((k*997)%N),"a") as f: f.write("new line %d\n"%k)
    while metric("logagent_lines_read_total")<base+1 and time.time()-t<10: time.sleep(0.02)
    lat.append(time.time()-t); time.sleep(0.3)
print(json.dumps({"append_to_ack_ms_median":round(sorted(lat)[len(lat)//2]*1000,1),"max_ms":round(max(lat)*1000,1)}))
a.terminate(); a.wait(); b.kill(); b.wait()
shutil.rmtree(w)
