"""gRPC servicers of the registry: accounts, MTA servers, pools, IPs, operations,
bridges and DKIM keys, thin adapters from protobuf to the Registry and back; the servicers of the
feedback loop's figures are `control.feedback_servicers`. Every method goes through
`rpc(...)` (`control.rpc`): authentication, error mapping, publishing after a
routing change.
"""

from __future__ import annotations

import grpc

from . import convert, paging, reports_reader
from ._pb.poolmta.v1 import poolmta_pb2 as pb
from ._pb.poolmta.v1 import poolmta_pb2_grpc as rpc_pb
from .contract import acks, rediskeys
from .errors import InvalidArgument
from .feedback_servicers import StatsServicer, SuppressionServicer
from .queue_servicer import QueueServicer
from .registry import dkim
from .models import Account
from .rpc import ACCOUNT, ADMIN, EITHER, Servicer, Services, rpc

DEFAULT_UNATTRIBUTED_LIMIT = 50


class AccountServicer(Servicer, rpc_pb.AccountServiceServicer):
    @rpc(ADMIN)
    def CreateAccount(self, request, context, admin):
        account, token = self.registry.create_account(request.name, convert.tier_name(request.tier))
        return pb.CreateAccountResponse(account=convert.account(account), token=token)

    @rpc(ADMIN)
    def GetAccount(self, request, context, admin):
        return convert.account(self.registry.get_account(request.user_id, request.name))

    @rpc(ADMIN)
    def ListAccounts(self, request, context, admin):
        found = self.registry.list_accounts_page(request.page_size, request.page_token, server_id=request.server_id,
                                                 tier=convert.tier_filter(request.tier))
        return pb.ListAccountsResponse(accounts=[convert.account(a) for a in found.items],
                                       next_page_token=found.next_page_token)

    @rpc(ADMIN)
    def SetAccountTier(self, request, context, admin):
        return convert.account(self.registry.set_account_tier(request.user_id, convert.tier_name(request.tier)))

    @rpc(ADMIN)
    def IssueAccountToken(self, request, context, admin):
        return pb.IssueAccountTokenResponse(token=self.registry.issue_token(request.user_id, request.revoke_existing))


    @rpc(EITHER)
    def WhoAmI(self, request, context, caller):
        if isinstance(caller, Account):
            return pb.WhoAmIResponse(account=convert.account(caller))
        return pb.WhoAmIResponse(admin=True)


class MtaServerServicer(Servicer, rpc_pb.MtaServerServiceServicer):
    @rpc(ADMIN, changes_routing=True)
    def RegisterMtaServer(self, request, context, admin):
        return convert.server(self.registry.register_server(request.hostname, request.zone, request.bounce_domain))

    @rpc(EITHER)
    def GetMtaServer(self, request, context, caller):
        return convert.server(self.registry.get_server(request.server_id, request.hostname))

    @rpc(ADMIN)
    def ListMtaServers(self, request, context, admin):
        found = self.registry.list_servers_page(request.page_size, request.page_token)
        return pb.ListMtaServersResponse(servers=[convert.server(s) for s in found.items],
                                         next_page_token=found.next_page_token)

    @rpc(ADMIN, changes_routing=True)
    def SetMtaServerBounceDomain(self, request, context, admin):
        return convert.server(self.registry.set_server_bounce_domain(request.server_id, request.bounce_domain))

    @rpc(ADMIN, changes_routing=True)
    def ProvisionSharedIp(self, request, context, admin):
        return convert.ip(
            self.registry.provision_shared_ip(request.server_id, request.address, request.weight, request.hostname)
        )

    @rpc(ADMIN)
    def ListSharedIps(self, request, context, admin):
        found = self.registry.list_shared_ips_page(request.server_id, request.page_size, request.page_token)
        return pb.ListIpsResponse(ips=[convert.ip(i) for i in found.items], next_page_token=found.next_page_token)

    @rpc(ADMIN, changes_routing=True)
    def ReleaseSharedIp(self, request, context, admin):
        self.registry.release_shared_ip(request.address)
        return pb.ReleaseSharedIpResponse()

    @rpc(ADMIN)
    async def RepublishSnapshots(self, request, context, admin):
        if request.server_id:
            self.registry.get_server(request.server_id)
        done = await self.services.publisher.republish(request.server_id)
        return pb.RepublishSnapshotsResponse(
            snapshots=[pb.PublishedSnapshot(server_id=s, version=v) for s, v in done]
        )

    @rpc(ADMIN)
    async def GetRoutingStatus(self, request, context, admin):
        server = self.registry.get_server(request.server_id)
        published = await self.services.publisher.published_version(server.server_id)
        live = await acks.live_workers(self.services.redis, server.server_id)
        return pb.RoutingStatus(
            server_id=server.server_id, routing_version=server.routing_version, published_version=published,
            workers=[pb.WorkerAck(worker_id=a.worker_id, version=a.version) for a in live],
        )

    @rpc(ADMIN)
    async def ListUnattributedReports(self, request, context, admin):
        size = request.page_size or request.limit or DEFAULT_UNATTRIBUTED_LIMIT  # limit: page_size's old name
        if not 0 < size <= rediskeys.UNATTRIBUTED_KEPT:
            raise InvalidArgument(f"page_size must be 1-{rediskeys.UNATTRIBUTED_KEPT} "
                                  f"(0 = {DEFAULT_UNATTRIBUTED_LIMIT})")
        wanted = paging.request(f"unattributed:{request.server_id}", size, request.page_token)
        if request.server_id:
            server_ids = [self.registry.get_server(request.server_id).server_id]
        else:
            server_ids = [s.server_id for s in self.registry.list_servers()]
        found = await reports_reader.unattributed_reports(self.services.redis, server_ids, wanted)
        return convert.unattributed_reports(found)


class PoolServicer(Servicer, rpc_pb.PoolServiceServicer):
    @rpc(ACCOUNT, changes_routing=True)
    def CreatePool(self, request, context, account):
        return convert.pool(
            self.registry.create_pool(
                account, label=request.label, server_id=request.server_id, tag=request.tag,
                feed_type=request.feed_type, headers=convert.headers_in(request.headers),
            )
        )

    @rpc(ACCOUNT)
    def GetPool(self, request, context, account):
        return convert.pool(self.registry.get_pool(account, request.smtp_id, request.label))

    @rpc(ACCOUNT)
    def ListPools(self, request, context, account):
        found = self.registry.list_pools_page(account, request.page_size, request.page_token,
                                              server_id=request.server_id,
                                              status=convert.pool_status_filter(request.status))
        return pb.ListPoolsResponse(pools=[convert.pool(p) for p in found.items],
                                    next_page_token=found.next_page_token)

    @rpc(ACCOUNT)
    def RenamePool(self, request, context, account):
        return convert.pool(self.registry.rename_pool(account, request.smtp_id, request.label))

    @rpc(ACCOUNT)
    def SetDefaultPool(self, request, context, account):
        return convert.pool(self.registry.set_default_pool(account, request.smtp_id))

    @rpc(ACCOUNT, changes_routing=True)
    def DeletePool(self, request, context, account):
        self.registry.delete_pool(account, request.smtp_id)
        return pb.DeletePoolResponse()

    @rpc(ACCOUNT, changes_routing=True)
    def SetPoolHeaders(self, request, context, account):
        return convert.pool(
            self.registry.set_pool_headers(account, request.smtp_id, convert.headers_in(request.headers))
        )

    @rpc(ACCOUNT, changes_routing=True)
    def SetPoolFeedType(self, request, context, account):
        return convert.pool(self.registry.set_pool_feed_type(account, request.smtp_id, request.feed_type))

    @rpc(ACCOUNT, changes_routing=True)
    def SetPoolBounceDomain(self, request, context, account):
        return convert.pool(self.registry.set_pool_bounce_domain(account, request.smtp_id, request.bounce_domain))

    @rpc(ACCOUNT, changes_routing=True)
    def SetPoolSigningDomains(self, request, context, account):
        return convert.pool(self.registry.set_pool_signing_domains(
            account, request.smtp_id, request.signing_domain, request.feedback_signing_domain))


class IpServicer(Servicer, rpc_pb.IpServiceServicer):
    @rpc(ACCOUNT, changes_routing=True)
    def ProvisionIp(self, request, context, account):
        return convert.ip(
            self.registry.provision_ip(
                account, address=request.address, smtp_id=request.smtp_id, server_id=request.server_id,
                weight=request.weight, hostname=request.hostname,
            )
        )

    @rpc(ACCOUNT)
    def GetIp(self, request, context, account):
        return convert.ip(self.registry.get_ip(account, request.address))

    @rpc(ACCOUNT)
    def ListIps(self, request, context, account):
        found = self.registry.list_ips_page(account, request.page_size, request.page_token, smtp_id=request.smtp_id,
                                            server_id=request.server_id, state=convert.ip_state_filter(request.state))
        return pb.ListIpsResponse(ips=[convert.ip(i) for i in found.items], next_page_token=found.next_page_token)

    @rpc(ACCOUNT)
    async def AssignPool(self, request, context, account):
        op = self.registry.assign_pool(account, request.address, request.smtp_id)
        await self.services.feed.notify()
        return convert.operation(op)

    @rpc(ACCOUNT)
    def GetOperation(self, request, context, account):
        return convert.operation(self.registry.get_operation(account, request.operation_id))

    @rpc(ACCOUNT)
    def ListOperations(self, request, context, account):
        found = self.registry.list_operations(account, request.address, request.page_size, request.page_token)
        return pb.ListOperationsResponse(operations=[convert.operation(o) for o in found.items],
                                         next_page_token=found.next_page_token)

    @rpc(ACCOUNT)
    async def WatchOperation(self, request, context, account):
        last = None
        while True:
            op = self.registry.get_operation(account, request.operation_id)
            if op != last:
                yield convert.operation(op)
                last = op
            if op.finished:
                return
            await self.services.feed.wait(0.5)

    @rpc(ACCOUNT, changes_routing=True)
    def SetIpWeight(self, request, context, account):
        return convert.ip(self.registry.set_ip_weight(account, request.address, request.weight))

    @rpc(ACCOUNT, changes_routing=True)
    def PauseIp(self, request, context, account):
        return convert.ip(self.registry.pause_ip(account, request.address))

    @rpc(ACCOUNT, changes_routing=True)
    def ResumeIp(self, request, context, account):
        return convert.ip(self.registry.resume_ip(account, request.address))

    @rpc(ACCOUNT, changes_routing=True)
    def ReleaseIp(self, request, context, account):
        self.registry.release_ip(account, request.address)
        return pb.ReleaseIpResponse()


class BridgeServicer(Servicer, rpc_pb.BridgeServiceServicer):
    @rpc(ACCOUNT, changes_routing=True)
    def CreateBridge(self, request, context, account):
        bridge, secret = self.registry.create_bridge(
            account, name=request.name, smtp_id=request.smtp_id, server_id=request.server_id,
            feed_type=request.feed_type, trusted_networks=list(request.trusted_networks),
        )
        return pb.BridgeWithSecret(bridge=convert.bridge(bridge), secret=secret)

    @rpc(ACCOUNT)
    def GetBridge(self, request, context, account):
        return convert.bridge(self.registry.get_bridge(account, request.bridge_id, request.name))

    @rpc(ACCOUNT)
    def ListBridges(self, request, context, account):
        found = self.registry.list_bridges_page(account, request.page_size, request.page_token,
                                                smtp_id=request.smtp_id, server_id=request.server_id,
                                                revoked=convert.bridge_revoked_filter(request.state))
        return pb.ListBridgesResponse(bridges=[convert.bridge(b) for b in found.items],
                                      next_page_token=found.next_page_token)

    @rpc(ACCOUNT, changes_routing=True)
    def RevokeBridge(self, request, context, account):
        return convert.bridge(self.registry.revoke_bridge(account, request.bridge_id))

    @rpc(ACCOUNT, changes_routing=True)
    def RotateBridgeSecret(self, request, context, account):
        bridge, secret = self.registry.rotate_bridge_secret(account, request.bridge_id)
        return pb.BridgeWithSecret(bridge=convert.bridge(bridge), secret=secret)

    @rpc(ACCOUNT, changes_routing=True)
    def SetBridgeTrustedNetworks(self, request, context, account):
        return convert.bridge(
            self.registry.set_bridge_trusted_networks(account, request.bridge_id, list(request.trusted_networks))
        )

    @rpc(ACCOUNT, changes_routing=True)
    def SetBridgeSendDsns(self, request, context, account):
        return convert.bridge(self.registry.set_bridge_send_dsns(account, request.bridge_id, request.send_dsns))


def _dkim_key(key) -> pb.DkimKey:
    return convert.dkim_key(key, dkim.txt_record(key))


class DkimServicer(Servicer, rpc_pb.DkimServiceServicer):
    @rpc(ACCOUNT, changes_routing=True)
    def GenerateDkimKey(self, request, context, account):
        return _dkim_key(self.registry.generate_dkim_key(
            account, request.domain, convert.dkim_algorithm(request.algorithm), request.selector))

    @rpc(ACCOUNT, changes_routing=True)
    def ImportDkimKey(self, request, context, account):
        return _dkim_key(self.registry.import_dkim_key(account, request.domain, request.selector,
                                                       request.private_key_pem))

    @rpc(ACCOUNT)
    def ListDkimKeys(self, request, context, account):
        found = self.registry.list_dkim_keys_page(account, request.page_size, request.page_token, request.domain)
        return pb.ListDkimKeysResponse(keys=[_dkim_key(k) for k in found.items], next_page_token=found.next_page_token)

    @rpc(ACCOUNT)
    def GetDkimKey(self, request, context, account):
        return _dkim_key(self.registry.get_dkim_key(account, request.key_id))

    @rpc(ACCOUNT, changes_routing=True)
    def RotateDkimKey(self, request, context, account):
        return _dkim_key(self.registry.rotate_dkim_key(account, request.domain, request.selector))

    @rpc(ACCOUNT, changes_routing=True)
    def RetireDkimKey(self, request, context, account):
        return _dkim_key(self.registry.retire_dkim_key(account, request.key_id, force=request.force))

    @rpc(ACCOUNT)
    def DeleteDkimKey(self, request, context, account):
        self.registry.delete_dkim_key(account, request.key_id)
        return pb.DeleteDkimKeyResponse()


def add_servicers(server: grpc.aio.Server, services: Services) -> list[str]:
    """Register every poolmta servicer; returns the full service names."""
    rpc_pb.add_AccountServiceServicer_to_server(AccountServicer(services), server)
    rpc_pb.add_MtaServerServiceServicer_to_server(MtaServerServicer(services), server)
    rpc_pb.add_PoolServiceServicer_to_server(PoolServicer(services), server)
    rpc_pb.add_IpServiceServicer_to_server(IpServicer(services), server)
    rpc_pb.add_BridgeServiceServicer_to_server(BridgeServicer(services), server)
    rpc_pb.add_StatsServiceServicer_to_server(StatsServicer(services), server)
    rpc_pb.add_SuppressionServiceServicer_to_server(SuppressionServicer(services), server)
    rpc_pb.add_DkimServiceServicer_to_server(DkimServicer(services), server)
    rpc_pb.add_QueueServiceServicer_to_server(QueueServicer(services), server)
    return [s.full_name for s in pb.DESCRIPTOR.services_by_name.values()]
